"""Small builders shared by the tests."""

import copy
import re
import unicodedata

import torch
from transformers import AutoConfig, AutoModelForSequenceClassification

from tests.conftest import TINY_ROBERTA


def tiny_classifier(fields: dict | None = None, num_labels: int = 2, seed: int = 0):
    fields = dict(fields or TINY_ROBERTA)
    model_type = fields.pop("model_type")
    config = AutoConfig.for_model(model_type, num_labels=num_labels, **fields)
    torch.manual_seed(seed)
    return AutoModelForSequenceClassification.from_config(config).eval()


def meta_classifier(model_type: str, num_labels: int = 2, **fields):
    config = AutoConfig.for_model(model_type, num_labels=num_labels, **fields)
    with torch.device("meta"):
        return AutoModelForSequenceClassification.from_config(config)


def twin(model):
    return copy.deepcopy(model)


def randomise(module_filter, model, std: float = 0.1):
    """Give every adapter tensor matching ``module_filter(name)`` random values."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if module_filter(name):
                p.normal_(0, std)


def wordpiece_tokenizer(texts):
    """A small BERT-style fast tokenizer (``[CLS] a [SEP] b [SEP]``, lower case, words and
    punctuation as tokens, character offsets) whose vocabulary is every word of ``texts``."""
    import re

    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
    words = sorted({w for t in texts for w in re.findall(r"\w+|[^\w\s]", t.lower())})
    vocab = {w: i for i, w in enumerate(specials + words)}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
        sep_token="[SEP]",
    )  # fmt: skip


def quiet_trainer(**kwargs):
    """A CPU Lightning trainer that writes and prints nothing, without sanity-check batches (on
    SmolLM2 two generation batches cost as much as six training steps)."""
    import lightning as L

    return L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False,
                     num_sanity_val_steps=0, **kwargs)  # fmt: skip


def wordpiece_letters(text: str) -> str:
    """Lower-case letters and digits without accents: what an uncased WordPiece round trip
    keeps of a text."""
    plain = unicodedata.normalize("NFKD", text.lower())
    return re.sub(r"[^a-z0-9]", "", "".join(c for c in plain if not unicodedata.combining(c)))


def lora_fit_before_after(encoder: str, data, lr: float, steps: int) -> tuple[dict, dict]:
    """LoRA r=8 on the query/value linears of ``encoder`` (a folder), ``steps`` AdamW steps at
    ``lr`` on ``data``: the validation metrics before and after."""
    from functools import partial

    from ssmlora_app.adapters import LoRAConfig
    from ssmlora_app.backbone import BackboneConfig
    from ssmlora_app.module import AdapterModule

    module = AdapterModule(BackboneConfig(name_or_path=encoder),
                           LoRAConfig(r=8, alpha=16, target_modules=["query", "value"]),
                           optimizer=partial(torch.optim.AdamW, lr=lr),
                           task_info=data.task_info)  # fmt: skip
    before = quiet_trainer().validate(module, data, verbose=False)[0]
    quiet_trainer(max_steps=steps, max_epochs=-1).fit(module, data)
    after = quiet_trainer().validate(module, data, verbose=False)[0]
    return before, after
