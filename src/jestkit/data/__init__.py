"""Data: the real Fashion-MNIST files, the image-caption pool and label noise."""
