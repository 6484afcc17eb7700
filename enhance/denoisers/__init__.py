"""GenHancer's denoisers: ``continuous`` (a FLUX-style MM-DiT trained by flow matching on VAE
latents) and ``discrete`` (a Perceiver over masked VQ codes), and ``sd`` (the frozen pretrained
Stable Diffusion UNet the DIVA / DCR / naive methods condition). The models built around them live
in each method's folder (``enhance/methods/<name>/model.py``)."""
