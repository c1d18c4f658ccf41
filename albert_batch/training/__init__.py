"""Fine-tuning (`albert-batch finetune`) and pretraining (`albert-batch pretrain`) ALBERT on Ray Train:

    config      FinetuneConfig and PretrainConfig, the typed settings
    data        labelled Parquet in, checked; training rows; length-bucketed batches
    bio         character spans to BIO token labels (NER)
    workspace   the working folder in the output: the starting model, Ray Train's checkpoints and what they hold
    progress    the steps done of those planned, as a person reads them
    loop        what every Ray Train worker of `finetune` runs; scoring an epoch with the batch pipeline's predictor
    metrics     accuracy, macro-F1, entity precision/recall/F1
    model_init  ALBERT built from scratch, offline: a SentencePiece tokenizer and fresh weights
    finetune    `finetune`: the above, end to end, and the training report
    sop         documents to sentence-order pairs: consecutive segments of one document, in order or swapped
    masking     whole-word n-gram masking for the masked LM
    pretrain_data  the corpus as examples, streamed: the held-out slice, the counts that refuse a corpus
    pretrain_loop  what every Ray Train worker of `pretrain` runs; scoring the held-out slice
    pretrain    `pretrain`: the corpus streamed through Ray Data, end to end, and the pretraining report

Importing this package imports nothing; Ray, torch and transformers are imported where they are used.
"""
