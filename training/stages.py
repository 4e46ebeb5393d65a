"""The names of the training stages, in the order `cf-diffusion train` runs them (`cf_diffusion.training.run`).

Plain names only, so the command's parser (`--stages` choices) imports no torch."""

STAGES = ("scm", "vae", "decoder", "unet", "predictor")
