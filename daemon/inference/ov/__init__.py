"""The OpenVINO GenAI backend: the model exported once to IR (``convert.py``), decoded by ``engine.py``.

Imported only when that backend is chosen (``--backend openvino``, the
default): ``openvino_genai`` loads its runtime on import.
"""

from typing import Any

#: CPU plugin precision settings by name. ``f32`` computes in fp32 with an
#: fp32 KV cache and no dynamic activation quantization; ``auto`` is the
#: plugin's own choice, which on CPUs with bf16 units is bf16 compute, a u8
#: KV cache and int8 activations, and changes what the model says.
PRECISIONS: dict[str, dict[str, Any]] = {
    "f32": {
        "INFERENCE_PRECISION_HINT": "f32",
        "KV_CACHE_PRECISION": "f32",
        "DYNAMIC_QUANTIZATION_GROUP_SIZE": 0,
    },
    "auto": {},
}
