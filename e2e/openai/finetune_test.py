"""The official OpenAI Python client's fine-tuning calls against a running `openledger dev`.

Run by scripts/openai-client.sh finetune_test.py from the Rust e2e test
`finetune::the_official_client_fine_tunes_on_a_datanet_and_calls_the_result`, which makes the
accounts, the Datanet version, the grant and the key, and passes:

  OL_BASE_URL       http://HOST:PORT/v1
  OL_KEY            the model builder's API key (an approved grant on the Datanet)
  OL_BASE_MODEL     the base model's id
  OL_TRAINING_FILE  datanet:<slug>@<version>
  OL_VALIDATION_FILE  a later sealed version of the same Datanet

Prints `fine_tuned_model <name>` and `ok`. Any failed check raises.
"""

import os
import time

import openai
from openai import OpenAI

client = OpenAI(base_url=os.environ["OL_BASE_URL"], api_key=os.environ["OL_KEY"], max_retries=0, timeout=300)
BASE_MODEL = os.environ["OL_BASE_MODEL"]
TRAINING_FILE = os.environ["OL_TRAINING_FILE"]
VALIDATION_FILE = os.environ["OL_VALIDATION_FILE"]
TERMINAL = ("succeeded", "failed", "cancelled")

# Short runs: two optimizer steps of a rank-4 adapter (the LoRA settings are an extension).
LORA = {"lora": {"rank": 4, "max_steps": 2, "checkpoint_every": 1, "max_seq_tokens": 96}}

job = client.fine_tuning.jobs.create(
    model=BASE_MODEL,
    training_file=TRAINING_FILE,
    validation_file=VALIDATION_FILE,
    hyperparameters={"n_epochs": 1, "batch_size": 1, "learning_rate_multiplier": "auto"},
    suffix="e2e",
    seed=7,
    metadata={"purpose": "e2e"},
    extra_body=LORA,
)
assert job.object == "fine_tuning.job", job
assert job.status in ("validating_files", "queued", "running"), job.status
assert job.model == BASE_MODEL and job.training_file == TRAINING_FILE and job.validation_file == VALIDATION_FILE
assert job.hyperparameters.n_epochs == 1 and job.hyperparameters.batch_size == 1, job.hyperparameters

listed = client.fine_tuning.jobs.list(limit=10, metadata={"purpose": "e2e"})
assert any(j.id == job.id for j in listed.data), listed
assert client.fine_tuning.jobs.list(metadata={"purpose": "other"}).data == []

deadline = time.time() + 600
while True:
    job = client.fine_tuning.jobs.retrieve(job.id)
    if job.status in TERMINAL:
        break
    assert time.time() < deadline, f"job {job.id} still {job.status}"
    time.sleep(1)
assert job.status == "succeeded", job.error
assert job.fine_tuned_model and job.fine_tuned_model.startswith(f"ft:{BASE_MODEL}:"), job.fine_tuned_model
assert job.trained_tokens and job.trained_tokens > 0 and job.finished_at, job

events = client.fine_tuning.jobs.list_events(job.id, limit=100)
kinds = {e.type for e in events.data}
assert kinds == {"message", "metrics"}, kinds
assert any("succeeded" in e.message for e in events.data), [e.message for e in events.data]
# Evaluated on the validation version: its records were read and the held-out metrics reported.
assert any("held-out records from the validation version" in e.message for e in events.data), [e.message for e in events.data]
assert any(e.type == "metrics" and e.data and "valid_loss" in e.data for e in events.data), [e.data for e in events.data]
assert (job.model_extra or {}).get("validation_records", 0) >= 2, job
checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id)
assert checkpoints.data and checkpoints.data[0].step_number >= 1, checkpoints

# The adapter is callable at once.
answer = client.chat.completions.create(
    model=job.fine_tuned_model,
    messages=[{"role": "user", "content": "How should carers help older adults drink enough?"}],
    max_tokens=8, temperature=0,
)
assert answer.model == job.fine_tuned_model and answer.choices[0].message.content is not None, answer
print("fine_tuned_model", job.fine_tuned_model, flush=True)

# Cancel: a long job stops.
long = client.fine_tuning.jobs.create(model=BASE_MODEL, training_file=TRAINING_FILE,
                                      hyperparameters={"n_epochs": 50}, extra_body={"lora": {"rank": 4}})
cancelled = client.fine_tuning.jobs.cancel(long.id)
deadline = time.time() + 120
while cancelled.status != "cancelled":
    assert time.time() < deadline, cancelled.status
    time.sleep(0.5)
    cancelled = client.fine_tuning.jobs.retrieve(long.id)

# Bad input: an unknown base, a bad training file, out-of-range hyper-parameters, a validation
# file that is the training version itself or names no version.
for kwargs, status in [
    ({"model": BASE_MODEL, "training_file": TRAINING_FILE, "validation_file": TRAINING_FILE}, 400),
    ({"model": BASE_MODEL, "training_file": TRAINING_FILE, "validation_file": "datanet:no-such-datanet@1"}, 404),
    ({"model": "gpt-4o-mini", "training_file": TRAINING_FILE}, 404),
    ({"model": BASE_MODEL, "training_file": "file-abc123"}, 400),
    ({"model": BASE_MODEL, "training_file": TRAINING_FILE, "hyperparameters": {"n_epochs": 0}}, 400),
    ({"model": BASE_MODEL, "training_file": "datanet:no-such-datanet@1"}, 404),
]:
    try:
        client.fine_tuning.jobs.create(**kwargs)
        raise AssertionError(f"{kwargs} was accepted")
    except openai.APIStatusError as error:
        assert error.status_code == status, (kwargs, error.status_code, error.message)
try:
    client.fine_tuning.jobs.retrieve("ftjob-00000000000000000000000000000000")
    raise AssertionError("an unknown job was found")
except openai.NotFoundError:
    pass
print("ok", flush=True)
