"""Models in plain torch, imported by module path.

* jestkit.models.vit: ViTConfig, ImageTower (FlexiViT views: PI-resized larger patches,
  token dropping) and the transformer Block shared by both towers.
* jestkit.models.text: TextConfig, TextTower.
* jestkit.models.dual: DualEncoder (SigLIP sigmoid or CLIP softmax), multires_split.
* jestkit.models.view: View, the scoring view both model families take (Flexi-JEST).
* jestkit.models.factory: ModelConfig and build_model, the image-caption job's dual encoder.
* jestkit.models.cnn: SmallCNN, the classifier of the noisy-label benchmark.
"""
