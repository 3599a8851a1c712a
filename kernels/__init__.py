"""Triton attention kernels for the decoder, each with a PyTorch reference twin.

Imported as `internvl_serve.kernels`; imports nothing from services/.
"""
