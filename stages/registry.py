"""Stage types by name. Adding a stage: one module in ``stages/`` and one line here."""

from __future__ import annotations

from importlib import import_module

from pipeline.stage import Stage

STAGES: dict[str, str] = {
    "ingest": "stages.ingest:Ingest",
    "dedup": "stages.dedup:Dedup",
    "synth_augment": "stages.synth:SynthAugment",
    "plan": "stages.plan:Plan",
    "ground": "stages.ground:Ground",
    "track": "stages.track:Track",
    "inpaint": "stages.inpaint:Inpaint",
    "ingest_images": "stages.ingest_images:IngestImages",
    "style_pairs": "stages.style_pairs:StylePairs",
    "caption_content": "stages.captions:CaptionContent",
    "caption_style": "stages.captions:CaptionStyle",
    "animate": "stages.animate:Animate",
    "depth": "stages.depth:Depth",
    "stylize": "stages.stylize:Stylize",
    "rubric": "stages.rubric:Rubric",
    "judge": "stages.judge:Judge",
    "export": "stages.export:Export",
    "hold_source": "stages.hold:HoldSource",
    "hold": "stages.hold:Hold",
}


def stage_class(type_name: str) -> type[Stage]:
    try:
        module_name, _, class_name = STAGES[type_name].partition(":")
    except KeyError:
        raise KeyError(f"unknown stage type {type_name!r} (known: {', '.join(sorted(STAGES))})") from None
    cls = getattr(import_module(module_name), class_name)
    if not (isinstance(cls, type) and issubclass(cls, Stage)):
        raise TypeError(f"{STAGES[type_name]} is not a Stage subclass")
    return cls
