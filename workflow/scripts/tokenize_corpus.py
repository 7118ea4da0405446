"""Documents -> fixed-length token contexts, split into train and eval by document."""

import os
import sys
from pathlib import Path

# The model's files were fetched on the submitting host (fetch_model, fetch_hub_model); this job
# reads them with the hub switched off, which only works if set before any HF library import.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # the saestab library  # noqa: F821
from saestab import corpus, logs, models, tokens

sm = snakemake  # noqa: F821
log = logs.setup(sm.log[0])
cfg = sm.params.tokens
model_dir = models.fetched_dir(sm.input.model)
tok = models.load_tokenizer(sm.params.spec, model_dir=model_dir)
docs = corpus.read_documents(sm.input.documents)
result = tokens.tokenize_corpus(
    docs, tok.encode, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
    context_length=cfg["context_length"], train_tokens=cfg["train_tokens"],
    eval_tokens=cfg["eval_tokens"], seed=cfg["split_seed"], prepend_bos=cfg["prepend_bos"],
    eval_documents=cfg["eval_documents"],
)
tokens.save_tokens(sm.output[0], result, meta={"model": sm.wildcards.model,
                                               "vocab_size": tok.vocab_size})
for split in ("train", "eval"):
    part = result[split]
    log.info("%s: %d contexts of %d tokens from %d documents (%d to %d tokens each)", split,
             part["contexts"].shape[0], cfg["context_length"], part["n_documents_used"],
             part["document_tokens"].min(), part["document_tokens"].max())
