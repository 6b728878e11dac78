"""Prompts rendered with a tokenizer's chat template, for the prompt/completion tasks.

An instruct model expects its own chat format: the prompt becomes a user message (after an
optional system message) rendered with the tokenizer's chat template and its generation prompt,
and the completion is what the assistant writes next. Shared by :class:`~.custom.CustomTask`
(``chat_template: true``) and the generated :class:`~.arithmetic.AdditionTask`.
"""

from __future__ import annotations

import datasets
from transformers import PreTrainedTokenizerBase

from ssmlora_app.errors import SsmloraError


def render_chat(
    ds: datasets.Dataset,
    tokenizer: PreTrainedTokenizerBase,
    chat_template: bool,
    system_prompt: str | None,
    teacher_forced: bool,
    where: str,
) -> datasets.Dataset:
    """``ds``'s ``prompt`` column rendered with the chat template (when ``chat_template``), and
    for teacher-forced training the completion ended with the EOS token (``target_ids``) so the
    model learns to stop (generation appends EOS itself). ``where`` names the option in errors."""
    if chat_template and not getattr(tokenizer, "chat_template", None):
        raise SsmloraError(
            f"{where} is true but the tokenizer has no chat template; use an instruct/chat "
            "model's tokenizer or set it to false."
        )
    bos = tokenizer.bos_token or None
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []

    def render(row: dict) -> dict:
        prompt = row["prompt"]
        if chat_template:
            messages = [{"role": "user", "content": prompt}]
            if system_prompt:
                messages.insert(0, {"role": "system", "content": system_prompt})
            prompt = tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True
            )
            if bos and prompt.startswith(bos):  # the LM encoding adds the BOS token itself
                prompt = prompt[len(bos) :]
        out = {"prompt": prompt}
        if teacher_forced:
            ids = tokenizer(row["target"], add_special_tokens=False)["input_ids"]
            out["target_ids"] = list(ids) + eos
        return out

    return ds.map(render, desc="Formatting prompts")
