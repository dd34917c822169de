"""Constants shared by the processor, the data pipeline, training and inference."""

IMAGE_TOKEN = "<image>"  # the marker users write in text; also the tokenizer's placeholder special token
IGNORE_INDEX = -100  # label value that the loss skips (PyTorch's cross_entropy default)
