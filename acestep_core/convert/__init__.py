"""Official and diffusers checkpoints -> our layout, and ours -> a diffusers folder.

keymaps.py (renames as data), transforms.py (weight-norm folding, transposes), configs.py (source config
readers), convert.py (whole checkpoints, strict), destination.py (which folders may be written, atomic
swaps), to_diffusers.py (the reverse direction), cli.py (`python -m weights_convert`). It builds on the
bottom layer only: config, components, checkpoint and safetensors_io.
"""
