"""The reference bank grown from /v1/classify traffic: which answers are recorded, the per-word
bound, the queue that never holds a request up, and GET/DELETE /v1/bank with tenant isolation."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from sqlalchemy import select

from service.api.schemas import Prediction
from service.bank.layered import layered
from service.bank.recorder import BankRecorder
from service.bank.selection import recorded_word
from service.crud.bank import Observation, count_features, record_features
from service.db import make_engine, make_session_factory, session_scope
from service.models import BankFeature

ADMIN, CLIENT = "bank-admin-key-0123456789", "bank-client-key-0123456789"
MODEL = "liteembed-tiny@random-0"


class Words:
    def __init__(self, *words: str) -> None:
        self.words = list(words)

    def index(self, word: str) -> int | None:
        return self.words.index(word) if word in self.words else None


def prediction(label: str, score: float, *, accepted: bool = True, class_id: str | None = None):
    return Prediction(
        label=label, score=score, class_id=class_id, similarity=0.3, accepted=accepted
    )


VOCABULARY = Words("kang", "cones")


def test_a_confident_accepted_plain_word_is_recorded() -> None:
    assert recorded_word([prediction("kang", 0.95), prediction("cones", 0.05)], VOCABULARY, 0.9)


@pytest.mark.parametrize(
    "predictions",
    [
        [prediction("kang", 0.89)],  # a close second
        [prediction("kang", 1.0, accepted=False)],  # nearer than the others, but of nothing
        [prediction("kang", 1.0, class_id="c1")],  # a registered class, not a vocabulary word
        [prediction("zorblat", 1.0)],  # not a word of the model's vocabulary
        [prediction("Kang", 1.0)],  # another spelling: another text feature was scored
        [prediction("cones", 0.04), prediction("kang", 0.96)],  # only the top answer counts
        [],
    ],
)
def test_other_answers_are_not_recorded(predictions: list[Prediction]) -> None:
    assert recorded_word(predictions, VOCABULARY, 0.9) is None


def sessions_of(url: str) -> Any:
    return make_session_factory(make_engine(url))


def observation(word: str, value: float, *, tenant: str = "default") -> Observation:
    feature = np.full(4, value, dtype=np.float32)
    return Observation(MODEL, tenant, word, feature.tobytes(), 4)


def test_each_word_keeps_only_its_newest_features(database_url: str) -> None:
    sessions = sessions_of(database_url)
    for value in range(5):
        with session_scope(sessions) as session:
            record_features(
                session=session,
                observations=[observation("kang", value), observation("cones", value)],
                per_word=3,
            )
    with session_scope(sessions) as session:
        record_features(
            session=session, observations=[observation("kang", 9, tenant="acme")], per_word=3
        )
    with sessions() as session:
        counts = {
            (c.tenant, c.word): c.features for c in count_features(session=session, tenant=None)[0]
        }
        kept = session.scalars(
            select(BankFeature.feature).where(
                BankFeature.tenant == "default", BankFeature.word == "kang"
            )
        )
        values = sorted(float(np.frombuffer(blob, np.float32)[0]) for blob in kept)
    assert counts == {("default", "kang"): 3, ("default", "cones"): 3, ("acme", "kang"): 1}
    assert values == [2.0, 3.0, 4.0]


def test_a_full_queue_drops_and_counts_instead_of_waiting(sqlite_url: str, make_settings: Any):
    dropped: list[int] = []
    settings = make_settings(sqlite_url, bank_from_traffic_tenants=["*"])
    recorder = BankRecorder(sessions_of(sqlite_url), settings, capacity=2, dropped=dropped.append)
    # Not started: nothing drains the queue.
    assert [recorder.offer(observation("kang", v)) for v in range(3)] == [True, True, False]
    assert dropped == [1]


def test_only_opted_in_tenants_are_recorded(sqlite_url: str, make_settings: Any) -> None:
    settings = make_settings(sqlite_url, bank_from_traffic_tenants=["acme"])
    sessions = sessions_of(sqlite_url)
    recorder = BankRecorder(sessions, settings)
    recorder.start()
    feature = np.ones(4, dtype=np.float32) / 2
    for tenant in ("acme", "globex"):
        recorder.observe(
            model_id=MODEL,
            tenant=tenant,
            vocabulary=VOCABULARY,
            features=[feature, feature],
            ranked=[[prediction("kang", 0.99)], [prediction("cones", 0.5)]],
        )
    recorder.wait_written()
    recorder.stop()
    with sessions() as session:
        counts = [
            (c.tenant, c.word, c.features) for c in count_features(session=session, tenant=None)[0]
        ]
    assert counts == [("acme", "kang", 1)]


def test_settings_refuse_a_tenant_list_with_a_bad_id(make_settings: Any) -> None:
    with pytest.raises(ValueError, match="BANK_FROM_TRAFFIC_TENANTS"):
        make_settings("sqlite://", bank_from_traffic_tenants="acme,Not A Tenant")
    assert make_settings("sqlite://", bank_from_traffic_tenants="acme, *").bank_records("x")


def test_the_training_bank_puts_the_operators_images_first_then_the_newest_recorded() -> None:
    import torch

    from liteembed.bank import ReferenceBank

    operator = ReferenceBank(MODEL, ["cones"], torch.eye(4)[:2], torch.tensor([0, 0]), 0.1)
    recorded = {
        "cones": np.tile(np.array([[0, 0, 1, 0]], np.float32), (3, 1)),
        "kang": np.array([[0, 0, 0, 1], [0, 0, 0, 2]], np.float32),
    }

    def lookup(word: str, limit: int) -> np.ndarray:
        return recorded.get(word, np.zeros((0, 4), np.float32))[:limit]

    bank = layered(operator, model_id=MODEL, dim=4, recorded=lookup, per_word=16)
    assert bank.images_of("cones", 3).tolist() == [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]]
    assert bank.images_of("kang").tolist() == [[0, 0, 0, 1], [0, 0, 0, 1]]  # normalised
    assert len(bank.images_of("cones", 2)) == 2 and len(bank.images_of("nothing", 4)) == 0
    assert "kang" in bank and "nothing" not in bank and bank.word_threshold == 0.1
    empty = layered(None, model_id=MODEL, dim=4, recorded=lookup, per_word=1)
    assert len(empty.images_of("kang", 16)) == 1


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def secured(database_url: str, make_settings: Any, make_client: Any) -> Any:
    settings = make_settings(
        database_url,
        admin_keys=[ADMIN],
        client_keys=[CLIENT],
        bank_from_traffic_tenants=["default"],
    )
    return make_client(settings)


def test_list_and_delete_stay_within_the_callers_tenant(secured: Any, database_url: str) -> None:
    sessions = sessions_of(database_url)
    with session_scope(sessions) as session:
        record_features(
            session=session,
            observations=[
                observation("kang", 1),
                observation("kang", 2),
                observation("cones", 1, tenant="acme"),
            ],
            per_word=16,
        )

    def listing(key: str, query: str = "") -> list[tuple[str, str, int]]:
        answer = secured.get(f"/v1/bank{query}", headers=bearer(key))
        assert answer.status_code == 200, answer.text
        return [(i["tenant"], i["word"], i["features"]) for i in answer.json()["items"]]

    own = secured.get("/v1/bank", headers=bearer(CLIENT)).json()
    assert own["recording"] is True and own["per_word"] == 16
    assert listing(CLIENT) == [("default", "kang", 2)]
    assert listing(ADMIN) == [("acme", "cones", 1), ("default", "kang", 2)]
    assert listing(ADMIN, "?tenant=acme") == [("acme", "cones", 1)]
    assert secured.get("/v1/bank?tenant=acme", headers=bearer(CLIENT)).status_code == 403
    refused = secured.delete("/v1/bank?tenant=acme", headers=bearer(CLIENT))
    assert refused.status_code == 403 and "detail" in refused.json()
    assert secured.get("/v1/bank?tenant=NOT%20A%20TENANT", headers=bearer(ADMIN)).status_code == 422
    assert listing(ADMIN) == [("acme", "cones", 1), ("default", "kang", 2)]
    # Paged: `total` counts every row, `limit` and `offset` pick the page.
    assert listing(ADMIN, "?limit=1&offset=1") == [("default", "kang", 2)]
    assert secured.get("/v1/bank?limit=1", headers=bearer(ADMIN)).json()["total"] == 2
    assert secured.get("/v1/bank", headers=bearer(CLIENT)).json()["total"] == 1
    assert secured.get("/v1/bank?limit=0", headers=bearer(ADMIN)).status_code == 422

    deleted = secured.delete("/v1/bank", headers=bearer(CLIENT))
    assert deleted.status_code == 200 and deleted.json() == {"deleted": 2}
    assert listing(ADMIN) == [("acme", "cones", 1)]
    assert secured.delete("/v1/bank?tenant=acme", headers=bearer(ADMIN)).json() == {"deleted": 1}
    assert listing(ADMIN) == []


def test_classify_with_labels_records_confident_plain_word_answers(
    secured: Any, make_image: Any, make_class_images: Any, wait_status: Any
) -> None:
    runtime = secured.app.state.runtime.get()
    image = make_image((20, 140, 40))
    # The words the tiny model's green image is nearest, and one far from it.
    feature = runtime.backend.encode_images([_decoded(image, runtime)]).float()
    order = (runtime.vocabulary.word_features.float() @ feature[0]).argsort(descending=True)
    near, far = runtime.vocabulary.words[int(order[0])], runtime.vocabulary.words[int(order[-1])]
    made = secured.post(
        "/v1/classes",
        data={"name": "zorblat"},
        files=make_class_images("green"),
        headers=bearer(CLIENT),
    )
    assert made.status_code == 202, made.text
    wait_status(secured, made.json()["id"], {"ready"}, headers=bearer(CLIENT))

    def classify(labels: list[str], key: str = CLIENT, query: str = "") -> dict[str, Any]:
        answer = secured.post(
            f"/v1/classify{query}",
            files=[("image", ("g.png", image, "image/png"))],
            data={"labels": labels},
            headers=bearer(key),
        )
        assert answer.status_code == 200, answer.text
        return answer.json()["predictions"][0]

    top = classify([near])
    assert top["label"] == near and top["score"] == 1.0 and top["accepted"], top
    assert classify([near], ADMIN, "?abstain=true")["accepted"]  # admin: the default tenant
    assert not classify([far])["accepted"]  # of nothing the word names: not recorded
    assert classify(["zorblat"])["class_id"]  # a registered class: not recorded
    assert classify([near], ADMIN, "?tenant=acme")["label"] == near  # acme is not opted in
    secured.app.state.bank_recorder.wait_written()
    items = secured.get("/v1/bank", headers=bearer(ADMIN)).json()["items"]
    assert [(i["tenant"], i["word"], i["features"]) for i in items] == [("default", near, 2)]


def _decoded(data: bytes, runtime: Any) -> Any:
    import io

    from PIL import Image

    from liteembed.augment import as_rgb

    return as_rgb(Image.open(io.BytesIO(data)), runtime.backend.decode_side)
