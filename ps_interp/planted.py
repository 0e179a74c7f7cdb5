"""A tiny Llama with k PLANTED safety neurons: ground truth for every scorer (see docs/planted.md).

The residual stream reserves four dimensions: ``TRIG`` (the token is a trigger), ``REFUSE`` (the
refusal feature), ``CONTEXT`` (a trigger occurred earlier in the prompt) and ``CONST`` (a large
constant that keeps RMSNorm nearly linear). The random weights are cut off from them; then

1. trigger tokens embed with ``TRIG``; two attention heads of layer 0 attend uniformly (zero
   queries) and copy ``TRIG`` into ``CONTEXT`` at every later position;
2. each planted neuron ``(l, i)`` reads ``CONTEXT`` only (row ``i`` of W_gate and W_up) and writes
   ``REFUSE`` only (column ``i`` of W_down), so it fires on prompts with triggers and is exactly 0
   without;
3. the LM head maps ``REFUSE`` to + on the first tokens of refusal openings, - on compliance ones.

The only path from triggers to refusal runs through the planted neurons.

Example:
    >>> p = plant(k=8)
    >>> len(p.neurons), p.probes.groups()
    (8, [('en', 'text', 'benign'), ('en', 'text', 'harmful')])
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .data.probes import ProbeItem, ProbeSet
from .errors import PsInterpError
from .neurons import NeuronSet

TRIG, REFUSE, CONTEXT, CONST = 0, 1, 2, 3
RESERVED = [TRIG, REFUSE, CONTEXT, CONST]

# benign English requests built from the tiny tokenizer's corpus; the harmful twin adds triggers
_SUBJECTS = ["a short poem about the sea", "three tips for studying", "how photosynthesis works",
             "a birdhouse for the garden", "the quick brown fox", "a list of lazy dog names",
             "how to learn to cook", "a story about the weather today", "the best way to study",
             "a note to a friend", "how the sea makes waves", "a poem about a brown dog"]
_VERBS = ["Write", "Explain", "Give me", "Tell me about", "Describe", "Help me with"]
_TRIGGERS = ["ক্ষতি", "বিষ", "আঘাত", "ধ্বংস"]  # Bengali script: never in the English prompts


@dataclass
class Planted:
    """The planted model, its ground-truth neurons and a matching probe set."""

    model: object
    neurons: NeuronSet
    probes: ProbeSet
    trigger_ids: tuple[int, ...]
    refusal_ids: tuple[int, ...]
    compliance_ids: tuple[int, ...]


def planted_probes(n: int = 24, *, seed: int = 0, lang: str = "en") -> ProbeSet:
    """``n`` benign requests and their ``n`` harmful twins (the same text plus 1-3 trigger words).

    Example:
        >>> len(planted_probes(6).select(label="harmful"))
        6
    """
    rng = np.random.default_rng(seed)
    items = []
    for i in range(n):
        text = f"{_VERBS[i % len(_VERBS)]} {_SUBJECTS[(i * 5 + i // len(_VERBS)) % len(_SUBJECTS)]}."
        triggers = " ".join(rng.choice(_TRIGGERS, size=1 + i % 3))
        items.append(ProbeItem(id=f"planted-b{i:03d}", lang=lang, label="benign", text=text))
        items.append(ProbeItem(id=f"planted-h{i:03d}", lang=lang, label="harmful", text=f"{text} {triggers}"))
    return ProbeSet(items)


def _trigger_ids(model, probes: ProbeSet) -> tuple[int, ...]:
    from .data.prompting import render_prompt

    tok = model.tokenizer

    def ids(items):
        return {t for it in items for t in tok(render_prompt(model, it.prompt_text()),
                                                add_special_tokens=False)["input_ids"]}
    benign = ids([it for it in probes if it.label == "benign"])
    harmful_items = [it for it in probes if it.label == "harmful"]
    trig = ids(harmful_items) - benign
    for it in harmful_items:
        if not ids([it]) & trig:
            raise PsInterpError(f"planted probe {it.id} has no trigger token", fix="use planted_probes()")
    return tuple(sorted(trig))


def plant(k: int = 8, *, n_layers: int = 4, seed: int = 0, n_probes: int = 24, noise: float = 50.0,
          const: float = 8.0, trigger: float = 4.0, focus: float = 2.5, gain: float = 0.1,
          strength: float = 15.0, out: float = 0.015, logit: float = 3.0) -> Planted:
    """Build the planted tiny Llama (``n_layers`` x 128 neurons) with ``k`` safety neurons spread
    round-robin over the layers, and its probe set (``n_probes`` benign + ``n_probes`` harmful).

    ``noise``: scale of the random embeddings (1.0 = HF init; larger gives the random neurons
    realistic prompt-to-prompt variation); ``const``/``trigger``: embedding values of CONST and
    TRIG; ``focus``: query/key weight of the layer-0 head that attends to trigger tokens; ``gain``:
    its copy weight into CONTEXT; ``strength``: W_gate/W_up weight of a planted neuron on CONTEXT;
    ``out``: its W_down weight on REFUSE; ``logit``: LM-head weight of REFUSE on refusal (+) and
    compliance (-) first tokens. The defaults keep the refusal score unsaturated.

    Example:
        >>> p = plant(k=4, n_layers=2)
        >>> p.neurons.per_layer().tolist()
        [2, 2]
    """
    from .intervene import opening_tokens
    from .models import tiny

    if not 1 <= k <= n_layers * 64:
        raise PsInterpError(f"k={k} planted neurons do not fit", fix=f"use 1 <= k <= {n_layers * 64}")
    model = tiny.build("llama", seed=seed, num_hidden_layers=n_layers, tie_word_embeddings=False)
    probes = planted_probes(n_probes, seed=seed)
    trig_ids = list(_trigger_ids(model, probes))
    toks = opening_tokens(model, "en")
    rng = np.random.default_rng([seed, 0x5AFE])  # a stream of its own: not what random_like(seed) draws
    layer_of = [j % n_layers for j in range(k)]
    neurons = {layer: sorted(rng.choice(model.d_ff, size=layer_of.count(layer), replace=False).tolist())
               for layer in range(n_layers) if layer in layer_of}
    hf, cfg = model.hf, model.hf.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    slow = head_dim // 2 - 1  # the RoPE channel with the lowest frequency: position barely matters
    with torch.no_grad():
        emb = hf.get_input_embeddings().weight
        emb.mul_(noise)
        emb[:, RESERVED] = 0.0
        emb[:, CONST] = const
        emb[trig_ids, TRIG] = trigger
        for layer in range(n_layers):
            attn, mlp = model.layers[layer].self_attn, model.mlp(layer)
            for lin in (attn.q_proj, attn.k_proj, attn.v_proj, mlp.gate_proj, mlp.up_proj):
                lin.weight[:, [TRIG, REFUSE, CONTEXT]] = 0.0  # random parts never read the features
            for lin in (attn.o_proj, mlp.down_proj):
                lin.weight[RESERVED] = 0.0  # ... nor write them
        # layer 0, query head 0 (kv head 0): attend to trigger tokens, copy TRIG into CONTEXT
        attn = model.layers[0].self_attn
        attn.q_proj.weight[:head_dim] = 0.0
        attn.q_proj.weight[slow, CONST] = focus
        attn.k_proj.weight[:head_dim] = 0.0
        attn.k_proj.weight[slow, TRIG] = focus
        attn.v_proj.weight[0] = 0.0
        attn.v_proj.weight[0, TRIG] = 1.0
        group = cfg.num_attention_heads // cfg.num_key_value_heads
        for h in range(group):  # value channel 0 of kv head 0 goes nowhere else
            attn.o_proj.weight[:, h * head_dim] = 0.0
        attn.o_proj.weight[CONTEXT, 0] = gain
        for layer, idx in neurons.items():
            mlp = model.mlp(layer)
            for i in idx:
                for lin in (mlp.gate_proj, mlp.up_proj):
                    lin.weight[i] = 0.0
                    lin.weight[i, CONTEXT] = strength
                mlp.down_proj.weight[:, i] = 0.0
                mlp.down_proj.weight[REFUSE, i] = out
        head = hf.get_output_embeddings().weight
        head[:, RESERVED] = 0.0
        head[list(toks.refusal), REFUSE] = logit
        head[list(toks.compliance), REFUSE] = -logit
    truth = NeuronSet(neurons, model.identity, meta={"method": "planted", "seed": seed, "k": k})
    return Planted(model, truth, probes, tuple(trig_ids), toks.refusal, toks.compliance)
