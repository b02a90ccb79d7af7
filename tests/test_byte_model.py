"""The benchmarks' byte model against a hand count."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from byte_model import bn_act_bytes, conv_act_bytes  # noqa: E402


def test_bn_act_bytes_by_hand():
    # (64, 128, 16, 16) fp32: 2,097,152 elements of 4 bytes. Forward: read x + write y =
    # 16,777,216 bytes. Forward+backward adds read x, read dy, write dx: 41,943,040 bytes.
    assert bn_act_bytes(64 * 128 * 16 * 16, 4, "fwd") == 16_777_216
    assert bn_act_bytes(64 * 128 * 16 * 16, 4, "fwd+bwd") == 41_943_040


def test_conv_act_bytes_by_hand():
    # bf16 3->64 4x4 stride 2 at batch 2, 8x8 -> 4x4: x 384, weight 3072, y 2048 elements.
    assert conv_act_bytes(384, 3072, 2048, 2, "fwd") == (384 + 3072 + 2048) * 2
    assert conv_act_bytes(384, 3072, 2048, 2, "fwd+bwd") == (3 * 384 + 3 * 3072 + 3 * 2048) * 2
