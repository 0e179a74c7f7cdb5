"""Run configuration for `ps-interp run`: defaults, TOML files, and clear errors on bad keys.

Example:
    >>> cfg = RunConfig.from_dict({"model": "smollm2-135m-instruct", "langs": ["en", "sw"]})
    >>> cfg.langs
    ['en', 'sw']
"""
from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from .errors import PsInterpError

CHOICES = {
    "position": ("last", "mean", "all", "image", "text"),
    "method": ("saliency", "mean_diff", "effect_size", "lape", "attribution"),
    "retention": ("kl", "greedy"),
    "judge": ("keywords", "refusal_score"),
}


@dataclass
class RunConfig:
    """Every setting of the main job; the report prints them all."""

    name: str = "default"
    model: str = "smollm2-135m-safety-en"  # the English-only safety-tuned organism (base: smollm2-135m-instruct)
    dtype: str | None = None
    device_map: str | None = None
    langs: list[str] = field(default_factory=lambda: ["en", "zh", "it", "vi", "ar", "ko", "th", "bn", "sw", "jv"])
    modalities: list[str] = field(default_factory=lambda: ["text"])
    position: str = "last"
    batch_size: int = 16
    autocast: bool | str = "auto"  # bf16 where the hardware runs it natively (ps_interp.precision)
    method: str = "saliency"
    rho: float = 0.01
    budget: float | None = 0.0003
    source_langs: list[str] = field(default_factory=lambda: ["en"])
    source_modalities: list[str] = field(default_factory=lambda: ["text"])
    n_random: int = 20
    steps: int = 40
    lr: float = 2e-3
    retention: str = "kl"
    train_batch_size: int = 8
    baselines: list[str] = field(default_factory=lambda: ["lora", "random"])
    judge: str = "keywords"
    max_new_tokens: int = 32  # in English tokens: each language gets as much text, see language_scale
    language_scale: float = 4.0  # at most this many times max_new_tokens for long-tokenised scripts; 1 = off
    eval_per_lang: int | None = 8  # matched pairs per language from the test split (None: all 45)
    system_prompt: str | None = None
    out_dir: str = "runs"
    seed: int = 0
    threads: int | None = None

    @classmethod
    def from_dict(cls, data: dict, where: str = "config") -> "RunConfig":
        names = {f.name: f for f in dataclasses.fields(cls)}
        for key, value in data.items():
            if key not in names:
                raise PsInterpError(f"{where}: unknown key {key!r}", fix=f"allowed keys: {', '.join(names)}")
            if key in CHOICES and value not in CHOICES[key]:
                raise PsInterpError(f"{where}: {key} = {value!r} is not allowed",
                                    fix=f"allowed values: {', '.join(CHOICES[key])}")
        if "autocast" in data and data["autocast"] not in (True, False, "auto"):
            raise PsInterpError(f"{where}: autocast = {data['autocast']!r} is not allowed",
                                fix='allowed values: true, false, "auto"')
        cfg = cls(**data)
        from .data import LANGS

        bad = [lang for lang in cfg.langs + cfg.source_langs if lang not in LANGS]
        if bad:
            raise PsInterpError(f"{where}: unknown languages {bad}", fix=f"allowed values: {', '.join(LANGS)}")
        bad_mod = [m for m in cfg.modalities + cfg.source_modalities if m not in ("text", "typo", "mixed")]
        if bad_mod:
            raise PsInterpError(f"{where}: unknown modalities {bad_mod}", fix="allowed values: text, typo, mixed")
        return cfg

    @classmethod
    def from_toml(cls, path: str | Path) -> "RunConfig":
        path = Path(path)
        if not path.exists():
            raise PsInterpError(f"config file not found: {path}", fix="pass an existing .toml file")
        try:
            data = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise PsInterpError(f"{path}: invalid TOML ({exc})", fix="check the syntax") from None
        return cls.from_dict(data, where=str(path))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
