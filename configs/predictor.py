"""Output-length predictor: data, features, ensemble, training and evaluation settings."""
import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.tokenizer = "tiny"                # the serving model (preset or HF dir) whose tokenizer
                                        # turns text into the ids the predictor sees
    c.bucket_edges = (50, 500)          # bucket boundaries in tokens: [0,50) [50,500) [500,inf)
    c.interval = 0.8                    # central predictive interval reported as lower/upper
    c.calibrate_interval = True         # scale the interval to cover `interval` on validation
    c.calibrate_out_of_bag = True       # ... pooled with each training prompt scored by the
                                        # members whose bootstrap left it out

    c.data = ml_collections.ConfigDict()
    # Dataset names (llmserve.data; get them with scripts/fetch_data.py) or KIND:PATH_GLOB
    # (castillo | instruct | sharegpt | trace_log) for files of your own. A missing dataset
    # is an error naming the fetch command; nothing is skipped or replaced.
    # Default: every CASTILLO file of Llama-3.1-8B-Instruct, the 3 chat sets (Alpaca, Dolly,
    # ShareGPT) and the 4 code sets (APPS, BigCodeBench, DS-1000, MBPP; 3,597 prompts): the
    # served model's own sampled lengths, on the seven task kinds its held-out evaluation
    # covers; the code prompts cost the chat prompts nothing (docs/RESULTS.md, "Training
    # set").
    c.data.sources = ("castillo_llama31_8b",)
    # Auxiliary training data, named as above: prompts answered by other responders
    # (Dolly: humans, Alpaca: text-davinci-003), each its own task head, so they teach the
    # n-gram features which instructions ask for long answers without claiming Llama's
    # lengths. Prompts that also appear in validation/test are dropped.
    c.data.aux_sources = ("dolly15k_validate", "alpaca_data_cleaned_1000")
    c.data.trace_log = ""               # an engine trace log (JSONL) to train on as well
    c.data.split = (0.7, 0.1, 0.2)      # train / validation (early stop, calibration) / test,
                                        # by prompt
    c.data.split_seed = 0               # the split's hash seed (and the synthetic data's)
    c.data.train_on_val = False         # train on train + validation (needs train.keep=
                                        # "last": the epoch count is fixed beforehand on a
                                        # run with validation); the interval is then
                                        # calibrated on the out-of-bag prompts alone
    c.data.synthetic = False            # True: train on a synthetic trace log (lengths set by
                                        # the prompt's template) instead of data.sources: for
                                        # tests and demos, never a stand-in for missing data
    c.data.synthetic_log = ""           # with data.synthetic: keep that trace log here
                                        # ("" = a temporary file)
    c.data.synthetic_num_requests = 2000  # with data.synthetic: requests in it

    c.features = ml_collections.ConfigDict()
    c.features.table_size = 2**16       # hashed n-gram buckets (embedding rows per member)
    c.features.ngram_orders = (3, 4, 5)  # n-gram orders hashed from the token ids (with
                                        # byte tokens, 3-5-grams stand in for words)
    c.features.max_prompt_tokens = 512  # longer prompts keep their first 3/4 and last 1/4
    c.features.hash_seed = 0            # changes every hash (a new feature space)
    c.features.weighting = "share"      # n-gram weights in the bag: share (count / total) or
                                        # log_l2 (1 + log count, L2-normalised per prompt)
    c.features.word_orders = ()         # + hashed word n-grams in the same bag (byte-level
                                        # tokenizers only), e.g. (1, 2); () = none
    c.features.word_weight = 1.0        # the word n-grams' share of the bag next to the
                                        # token n-grams' 1
    c.features.encoder = ""             # a local Hugging Face BERT-family sentence encoder
                                        # directory (e.g. all-MiniLM-L6-v2): each prompt's
                                        # embedding becomes an MLP input too. Off by default:
                                        # on a CPU it costs ms per prompt, far above the
                                        # 0.1 ms budget (docs/RESULTS.md, fourth round)
    c.features.encoder_max_tokens = 256  # wordpieces per prompt ([CLS] and [SEP] included;
                                        # at most the model's max_seq_length)
    c.features.encoder_cache_dir = ""   # embeddings computed in training/evaluation kept here
                                        # ("" = WORKDIR/encoder_cache)

    c.model = ml_collections.ConfigDict()
    c.model.embed_dim = 16              # embedding-bag width
    c.model.hidden_dim = 128            # MLP width (two hidden layers)
    c.model.dropout = 0.3               # dropout after each hidden layer while training
    c.model.bag_dropout = 0.7           # share of a prompt's n-grams dropped while training
    c.model.wide = False                # + a linear weight per n-gram on the mean (wide & deep)
    c.model.encoder_proj = 32           # with features.encoder: the embedding's learned
                                        # projection width (then LayerNorm), next to the bag
    c.model.encoder_dropout = 0.5       # dropout on that projection while training (0.5 was
                                        # best on validation with MiniLM-L6)

    c.train = ml_collections.ConfigDict()
    c.train.ensemble_size = 5           # K members, trained together under jax.vmap
    c.train.bootstrap = True            # each member trains on its own Poisson bootstrap
    c.train.batch_size = 64             # prompts per step
    c.train.num_epochs = 40             # most epochs (early stopping usually ends sooner)
    c.train.patience = 8                # stop when no member improved for this many epochs
    c.train.early_stop_metric = "log_mae"  # per-member model selection on validation: log_mae
                                        # (|log length error|) or nll (overconfident stds
                                        # make NLL turn up epochs before the means stop improving)
                                        # or ensemble_log_mae (one epoch for all members)
    c.train.keep = "best"               # best: each member's best validation epoch (early
                                        # stopping); last: run every epoch, keep the last
    c.train.stop_epoch = 0              # with keep=last: > 0 stops after this epoch (the
                                        # schedule still spans num_epochs) and keeps it:
                                        # members' NLL rises after ~epoch 13 while the
                                        # ensemble's validation error stays flat
    c.train.learning_rate = 1e-3        # AdamW peak learning rate
    c.train.warmup_frac = 0.05          # linear warm-up share of all steps, then cosine decay
    c.train.weight_decay = 1e-4         # AdamW decoupled weight decay
    c.train.clip_norm = 1.0             # per-member global gradient-norm clip
    c.train.nll_beta = 0.0              # beta-NLL: NLL terms weighted by sigma^(2 beta) (no
                                        # gradient), 0 = plain Gaussian NLL
    c.train.aux_weight = 0.5            # loss weight of an auxiliary prompt next to a served one
    c.train.bucket_loss_weight = 0.5    # weight of the bucket cross-entropy next to the NLL
    c.train.seed = 0                    # init, bootstrap, dropout and batch order

    c.eval = ml_collections.ConfigDict()
    c.eval.latency_batch_size = 64      # prompts per predict() call in the latency figure
    c.eval.latency_repeats = 50         # timed calls (after one warm-up call)
    c.eval.cv_folds = 0                 # > 1: also k-fold cross-validate the checkpoint's
                                        # recipe over all its prompts (split by prompt; one
                                        # training per fold): mean +- std across folds
    c.eval.split_from = ""              # another checkpoint's workdir: score on its data's
                                        # held-out split instead (e.g. a chat-trained
                                        # checkpoint on the all-nine test prompts)
    c.eval.workload_log = ""            # if set: write every held-out (prompt, sampled length)
                                        # as a request of a trace log here, for the benchmark's
                                        # workload.kind=jsonl (end-to-end on unseen prompts)
    c.eval.workload_rate = 15.0         # its Poisson arrival rate, requests/s
    c.eval.workload_max_len = 8192      # leave out requests whose prompt + output exceed this
                                        # (the serving model's max_model_len); 0 = keep all
    c.eval.workload_num_requests = 0    # > 0: keep this many (a seeded random sample)
    c.eval.workload_output_scale = 1.0  # < 1: output lengths x this (rounded up), for an
                                        # engine too slow for the real lengths; the eval
                                        # then also writes WORKDIR/scaled_<x>/checkpoint,
                                        # the predictor rescaled to match
    return c
