"""polydiff.video: video diffusion on (B, C, F, H, W) tensors over polydiff.nn.VideoUNet.

Modules: ``data`` (bouncing digits, moving shapes, video folders), ``models`` (named VideoUNet
sizes), ``experiments`` (datasets and hooks the configs build), ``pipeline`` (class/text-to-video,
image-to-video, prediction, interpolation, long clips), ``metrics``, ``io`` (GIF / MP4), ``demo``.
"""
