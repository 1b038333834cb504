"""The settings of distill (and transfer) that take one of a fixed set of values: the choices the CLI offers for
``--amp`` and ``--kd``. No third-party imports: the CLI builds every command's parser, also on a board install
(numpy and onnxruntime only, docs/profile.md), where ``mixa profile`` must run."""

AMP_MODES = ("auto", "bf16", "fp16", "none")   # auto: bf16 on CUDA if supported, else fp16; off on CPU
KD_KINDS = ("soft", "hard", "none")            # loss against the teacher (see mixa.distill.losses)
