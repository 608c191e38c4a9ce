"""The inference subsystem: the base model, the adapter store, the engine, the service.

Modules, from the bottom up (only those marked *torch* import torch, and they
are imported lazily by the others, so that a persona daemon never loads it):

* ``errors``    — the exception tree, each with its wire code;
* ``limits``    — the engine's bounds as named knobs;
* ``adapters``  — the content-addressed adapter store and its name index;
* ``model``     — finding, converting (GGUF → cache) and loading the base model (*torch*);
* ``scheduler`` — per-owner queues served round-robin, admin calls first, bounded;
* ``slots``     — adapter slots, stacks, merged copies, which weights are live (*torch*);
* ``decoding``  — the worker thread's engine: prefill, batched decoding, status (*torch*);
* ``engine``    — the asyncio face: one worker thread, tokens streamed back (*torch*);
* ``train``     — training one LoRA level with its parents frozen (*torch*);
* ``demo``      — the demo adapters, trained once from ``examples/adapters``;
* ``backend``   — the interface personas use, in-process or over the bus;
* ``service``   — ``personad inference``: the engine on the bus as ``cap:inference``;
* ``cli``       — ``personad inference`` and ``personad adapter …``.

See docs/inference.md.
"""
