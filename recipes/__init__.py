"""mixa.recipes: the named distillation recipes (NAME.yaml), read by mixa.distill.recipes."""
