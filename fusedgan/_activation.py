"""Activation codes shared by every backend (Triton constexpr, C++ int, reference)."""

IDENTITY, RELU, LEAKY_RELU = 0, 1, 2
ACTIVATIONS = {"identity": IDENTITY, "relu": RELU, "leaky_relu": LEAKY_RELU}
NAMES = {code: name for name, code in ACTIVATIONS.items()}


def activation_code(activation):
    try:
        return ACTIVATIONS[activation]
    except (KeyError, TypeError):
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}") from None
