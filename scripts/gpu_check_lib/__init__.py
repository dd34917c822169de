"""The pieces of `scripts/gpu_check.py`: FLOP accounting (`flops`), the phase runner that keeps results on disk
(`harness`), the shared models and inputs (`workload`), the pre-flight and placement checks (`checks`), the
measurements (`phases`: add a phase there) and the README table (`report`)."""
