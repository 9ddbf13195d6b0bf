"""`fusionindex finetune` and `evaluate`: catalogues in, fine-tuned models and recall reports out.

settings.py    FinetuneSettings (importable without torch: the CLI's parser uses it)
finetune.py    run_finetune: data, model, trainer, checkpoints, the best model
evaluation.py  embedding a split, recall@k for caption/image/query tasks, run_evaluate
markdown.py    the evaluation report as markdown
"""
