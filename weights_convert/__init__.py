"""`python -m weights_convert`: the converter's command line, kept under its first name.

The converter itself is `acestep_core.convert` (key maps, tensor transforms, source config readers,
destination safety, diffusers export); this package only runs its CLI.
"""
