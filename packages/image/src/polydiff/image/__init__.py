"""polydiff.image: image diffusion (built-in data, pixel and latent models, metrics, pipeline).

Composes ``polydiff.core`` (schedules, objective, samplers, guidance), ``polydiff.nn`` (U-Net,
DiT, text encoders) and ``polydiff.train``; re-implements none of them.
"""
