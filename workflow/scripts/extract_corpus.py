"""Corpus -> plain-text documents (JSONL): gensim Wikipedia sample, text files or a HF dataset."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # the saestab library  # noqa: F821
from saestab import corpus, io, logs

log = logs.setup(snakemake.log[0])  # noqa: F821
cfg = snakemake.params.corpus  # noqa: F821
source = cfg["source"]
if source == "gensim_wiki":
    docs = corpus.wiki_documents(snakemake.input[0], min_chars=cfg["min_chars"])  # noqa: F821
elif source == "text_glob":
    docs = corpus.text_glob_documents(cfg["text_glob"])
else:
    hf = cfg["hf_dataset"]
    docs = corpus.hf_dataset_documents(hf["name"], split=hf["split"], text_field=hf["text_field"],
                                       max_documents=hf["max_documents"], config=hf["config"],
                                       revision=hf["revision"])
docs = [d for d in docs if len(d["text"]) >= cfg["min_chars"]]
if not docs:
    raise io.InputError(f"corpus source {source!r} gave no documents of >= {cfg['min_chars']} "
                        "characters; check corpus.* in the config")
corpus.write_documents(snakemake.output[0], docs)  # noqa: F821
log.info("%d documents, %d characters", len(docs), sum(len(d["text"]) for d in docs))
