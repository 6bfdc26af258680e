"""What the reference tests share: kvcalc's layer and transformers' module run on the same inputs --
a prefill of PREFILL tokens, then one token at a time up to TOKENS -- and compared in fp32 as
max|error| / max|reference|."""

import torch

BATCH, TOKENS, PREFILL = 2, 12, 7
TOLERANCE = 1e-5
STEPS = [(0, PREFILL)] + [(t, t + 1) for t in range(PREFILL, TOKENS)]
"""(start, end) of each step: the prefill, then each decode token."""


def randomise(module):
    """Every parameter far from its init (norm scales, biases, decays included), so that each
    weight's name and role matter when it is loaded."""
    with torch.no_grad():
        for param in module.parameters():
            param.normal_(0, 0.3)
    return module.eval()


def kvcalc_steps(layer, x):
    """kvcalc's layer over x (BATCH, TOKENS, hidden): the prefill, then cached decode."""
    layer.allocate_cache(BATCH, TOKENS, torch.float32)
    return torch.cat([layer(x[:, a:b], start_pos=a) for a, b in STEPS], dim=1)


def relative_error(ours, reference) -> float:
    return ((ours - reference).abs().max() / reference.abs().max()).item()
