"""Sparse autoencoders on video activations, through SAELens (``pip install 'hooked-vivit[sae]'``)."""
