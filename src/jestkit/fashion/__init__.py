"""The Fashion-MNIST application: the real images (fashion_mnist), the image-caption pool with
web-like noise (captions, prepare, source), label noise (label_noise), evaluation on the test
set (evaluate), the reference trained on the curated set (reference), one learner run
(learner) and `jestkit demo` (demo)."""
