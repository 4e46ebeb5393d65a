"""Reading factors off images: the pipeline's factor predictor, or on procedural data the dataset's own measurement
function where it has one (e.g. `morpho`'s thickness and intensity, which no learned model influences)."""

import numpy as np
import torch

from cf_diffusion.data import ProceduralDataset
from cf_diffusion.evaluation.editing import to_tensor
from cf_diffusion.images import unit_to_uint8


@torch.no_grad()
def read_factors(pipe, images: np.ndarray, batch_size: int = 64) -> dict[str, np.ndarray]:
    """Every factor read off images by the pipeline's factor predictor.

    Args:
        pipe: A pipeline with a `factor_predictor`.
        images: Float array[N, H, W, C] in [0, 1].
        batch_size: Images per forward pass.

    Returns:
        Factor name -> array[N]: level indices for discrete factors, raw units for continuous ones.
    """
    predictor = pipe.factor_predictor
    if predictor is None:
        raise ValueError("the pipeline has no factor_predictor to read factors off images")
    encoded = [
        predictor.predict(to_tensor(images[s : s + batch_size]).to(predictor.device, predictor.dtype) * 2 - 1).cpu()
        for s in range(0, len(images), batch_size)
    ]
    return {name: values.numpy() for name, values in pipe.schema.denormalize(torch.cat(encoded)).items()}


def read_measured(pipe, dataset: ProceduralDataset, images: np.ndarray) -> dict[str, np.ndarray]:
    """Every factor of images in [0, 1] (float array[N, H, W, C]): the dataset's measurement function where it has
    one, the pipeline's factor predictor for the rest (level indices, or raw units for continuous factors)."""
    read = read_factors(pipe, images)
    measure = getattr(dataset, "measure", None)
    if measure is not None:
        pixels = unit_to_uint8(images)
        if pixels.shape[-1] == 1:
            pixels = np.repeat(pixels, 3, axis=-1)
        read.update({k: np.asarray(v, dtype=np.float64) for k, v in measure(pixels).items() if k in read})
    return read
