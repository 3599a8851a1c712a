"""The vision encoder service: images and video frames in, projected embeddings out."""
