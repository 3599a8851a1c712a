"""Media pipeline of the encoder: checkpoint preprocess settings, image decode + tiling, video decode + sampling.

Modules: `config` (ImagePreprocess, VideoPreprocess, MediaLimits, load_preprocess), `images` (decode_image,
image_to_tiles), `video` (VideoDecoder, VideoFrames, decode_video). Nothing is imported here on purpose: the
crash-contained video worker (`video_worker`) imports this package and must stay free of torch.
"""
