"""Image classification: the paper's ImageNet recipe on any timm model (config, data, model, train, evaluate,
predict)."""
