"""The backend console: staff only, live state, add/edit with a write-only encrypted key
and a "test connection" button, drain/enable/disable at once, every operation audited."""

from __future__ import annotations

import pytest
from django.test import Client

from apps.backends.models import Backend
from apps.console.models import AuditEntry

pytestmark = pytest.mark.django_db(transaction=True)

SECRET = "sk-canary-4b1d9e"


def signed_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def form_data(base_url: str, **changes: str) -> dict[str, str]:
    data = {
        "name": "gpu-1",
        "alias": "chat",
        "base_url": base_url,
        "model_name": "sim-model",
        "tier": "primary",
        "weight": "1",
        "max_concurrency": "16",
        "timeout": "60",
        "price_input_per_million": "0.5",
        "price_output_per_million": "1.5",
        "api_key_env": "",
        "state": "enabled",
        "action": "save",
    }
    data.update(changes)
    return data


def test_only_staff_get_in(alice, chat_backend):
    pages = [
        "/console/",
        "/console/backends/",
        "/console/backends/live.json",
        "/console/backends/add/",
        f"/console/backends/{chat_backend.pk}/",
        "/console/audit/",
        "/console/metrics/",
        "/console/cache/",
        "/console/keys/",
    ]
    anonymous, person = Client(), signed_in(alice)
    for page in pages:
        assert anonymous.get(page).status_code == 302, page
        assert anonymous.get(page)["Location"].startswith("/accounts/login/")
        assert person.get(page).status_code == 403, page
    actions = [
        ("/console/backends/add/", form_data("http://127.0.0.1:9/v1")),
        (f"/console/backends/{chat_backend.pk}/", form_data("http://127.0.0.1:9/v1")),
        (f"/console/backends/{chat_backend.pk}/state/", {"state": "disabled"}),
    ]
    for url, data in actions:
        assert person.post(url, data).status_code == 403, url
    chat_backend.refresh_from_db()
    assert chat_backend.state == "enabled"
    assert Backend.objects.count() == 1
    assert not AuditEntry.objects.exists()


def test_staff_add_a_backend_with_a_key_that_is_never_shown_again(staff, start_simulator):
    simulator = start_simulator("--api-key", SECRET)
    client = signed_in(staff)
    response = client.post("/console/backends/add/", form_data(simulator.base_url, api_key=SECRET))
    assert response.status_code == 302
    backend = Backend.objects.get(name="gpu-1")
    assert backend.api_key() == SECRET
    assert SECRET not in backend.api_key_encrypted  # encrypted at rest
    for page in ["/console/backends/", f"/console/backends/{backend.pk}/", "/console/audit/"]:
        body = client.get(page).content.decode()
        assert SECRET not in body
    assert "(a key is set)" in client.get(f"/console/backends/{backend.pk}/").content.decode()
    entry = AuditEntry.objects.get()
    assert (entry.actor, entry.action, entry.target) == (staff, "backend.add", "gpu-1")
    assert SECRET not in entry.detail

    # Editing without typing a key keeps it; the stored key works against the backend.
    response = client.post(
        f"/console/backends/{backend.pk}/",
        form_data(simulator.base_url, weight="3", action="test"),
    )
    assert "gpu-1 is up and serves sim-model" in response.content.decode()
    response = client.post(f"/console/backends/{backend.pk}/", form_data(simulator.base_url))
    backend.refresh_from_db()
    assert backend.api_key() == SECRET


def test_test_connection_reports_without_saving(staff, start_simulator):
    simulator = start_simulator("--api-key", SECRET)
    client = signed_in(staff)

    def test(**changes: str) -> str:
        data = form_data(changes.pop("base_url", simulator.base_url), action="test", **changes)
        response = client.post("/console/backends/add/", data)
        assert response.status_code == 200
        return response.content.decode()

    assert "gpu-1 is up and serves sim-model" in test(api_key=SECRET)
    assert "gpu-1 refused the API key (HTTP 401)" in test(api_key="wrong")
    assert "does not list the model &#x27;other&#x27;" in test(api_key=SECRET, model_name="other")
    assert "could not reach gpu-1" in test(base_url="http://127.0.0.1:9/v1")
    assert not Backend.objects.exists()
    assert [e.action for e in AuditEntry.objects.all()] == ["backend.test"] * 4


def test_an_unsafe_url_is_refused_and_changes_nothing(staff):
    client = signed_in(staff)
    response = client.post("/console/backends/add/", form_data("http://169.254.169.254/v1"))
    assert response.status_code == 200
    assert "field-error" in response.content.decode()
    assert not Backend.objects.exists()
    assert not AuditEntry.objects.exists()


def test_an_embeddings_backend_and_the_fields_a_backend_refuses(staff):
    client = signed_in(staff)
    page = client.get("/console/backends/add/").content.decode()
    assert "Fields it refuses" in page and 'value="embeddings"' in page
    response = client.post(
        "/console/backends/add/",
        form_data(
            "http://127.0.0.1:9/v1",
            kind="embeddings",
            drop_params="logprobs, service_tier",
            alias="embed",
        ),
    )
    assert response.status_code == 302
    backend = Backend.objects.get(name="gpu-1")
    assert (backend.kind, backend.drop_params) == ("embeddings", "logprobs, service_tier")
    assert backend.without_dropped({"logprobs": True, "top_k": 5}) == {"top_k": 5}
    response = client.post(
        f"/console/backends/{backend.pk}/",
        form_data("http://127.0.0.1:9/v1", drop_params="not a name!", alias="embed"),
    )
    assert response.status_code == 200 and "Field names, separated by commas." in (
        response.content.decode()
    )
    backend.refresh_from_db()
    assert backend.drop_params == "logprobs, service_tier"


def test_a_key_variable_must_be_one_of_barista_s_own_never_a_server_setting(staff, monkeypatch):
    """Staff cannot point a backend at SECRET_KEY or DATABASE_URL and have the server
    send it to a URL of their choosing."""
    client = signed_in(staff)
    for name in ("SECRET_KEY", "DATABASE_URL", "REDIS_URL"):
        response = client.post(
            "/console/backends/add/", form_data("http://127.0.0.1:9/v1", api_key_env=name)
        )
        assert response.status_code == 200 and "BARISTA_BACKEND_KEY_" in response.content.decode()
    assert not Backend.objects.exists()
    monkeypatch.setenv("BARISTA_BACKEND_KEY_GPU", "sk-from-env")
    response = client.post(
        "/console/backends/add/",
        form_data("http://127.0.0.1:9/v1", api_key_env="BARISTA_BACKEND_KEY_GPU"),
    )
    assert response.status_code == 302
    assert Backend.objects.get().api_key() == "sk-from-env"
    # A row saved before the rule (straight into the database) is not read from either.
    monkeypatch.setenv("SECRET_KEY", "the-server-secret")
    Backend.objects.update(api_key_env="SECRET_KEY")
    assert Backend.objects.get().api_key() == ""


def test_sharing_is_the_alias_s_and_a_newcomer_takes_the_alias_s_choice(staff):
    from apps.backends.services import backend_save

    def make(name: str, alias: str, share: bool) -> Backend:
        backend = Backend(name=name, alias=alias, base_url="http://127.0.0.1:9/v1", model_name="m")
        backend.share_answers = share
        return backend_save(backend=backend)

    first = make("faq-1", "faq", True)  # the alias's first backend sets its choice
    second = make("faq-2", "faq", False)  # a newcomer takes it
    assert second.share_answers is True
    private = make("chat-1", "chat", False)
    private.alias, private.share_answers = "faq", False  # moved in, box as it was: joins
    assert backend_save(backend=private).share_answers is True
    first.share_answers = False  # unticked on one: the alias is private again
    backend_save(backend=first)
    assert set(Backend.objects.filter(alias="faq").values_list("share_answers", flat=True)) == {
        False
    }


def test_drain_disable_enable_take_effect_and_are_audited(staff, chat_backend):
    client = signed_in(staff)
    url = f"/console/backends/{chat_backend.pk}/state/"
    for state in ["draining", "disabled", "enabled"]:
        assert client.post(url, {"state": state}).status_code == 302
        chat_backend.refresh_from_db()
        assert chat_backend.state == state
    assert client.post(url, {"state": "exploded"}).status_code == 302
    chat_backend.refresh_from_db()
    assert chat_backend.state == "enabled"
    assert client.get(url).status_code == 405
    actions = list(AuditEntry.objects.order_by("pk").values_list("action", "detail"))
    assert actions == [
        ("backend.draining", "was enabled"),
        ("backend.disabled", "was draining"),
        ("backend.enabled", "was disabled"),
    ]


def test_the_list_shows_live_state(staff, start_simulator, live_conn):
    simulator = start_simulator()
    backend = simulator.register(name="live-one", max_concurrency=8)
    live_conn.zadd(f"barista:backend:{backend.pk}:leases", {"lease-a": 9e12, "lease-b": 9e12})
    live_conn.hset(f"barista:backend:{backend.pk}:stats", mapping={"ttft": "0.25"})
    client = signed_in(staff)
    page = client.get("/console/backends/").content.decode()
    assert "live-one" in page and "2 / 8" in page and "250 ms" in page
    data = client.get("/console/backends/live.json").json()
    [row] = data["backends"]
    assert data["redis"] is True
    assert (row["in_flight"], row["ttft_ms"], row["circuit"]) == (2, 250, "closed")


def test_a_stored_key_goes_only_to_the_server_it_was_saved_for(staff, start_simulator):
    simulator = start_simulator("--api-key", SECRET)
    elsewhere = start_simulator()  # another server, which would log what it is sent
    client = signed_in(staff)
    client.post("/console/backends/add/", form_data(simulator.base_url, api_key=SECRET))
    backend = Backend.objects.get(name="gpu-1")
    page = f"/console/backends/{backend.pk}/"

    # Pointed at another port (then host, then scheme) with the key left blank: refused,
    # for a test and for a save, and nothing was sent anywhere.
    moved = [
        elsewhere.base_url,
        simulator.base_url.replace("127.0.0.1", "localhost"),
        simulator.base_url.replace("http://", "https://"),
    ]
    for url in moved:
        for action in ("test", "save"):
            response = client.post(page, form_data(url, action=action))
            assert response.status_code == 200
            assert "type the API key again" in response.content.decode()
    sent = elsewhere.stats()
    assert sent["model_lists_total"] == sent["requests_total"] == 0
    backend.refresh_from_db()
    assert (backend.base_url, backend.api_key()) == (simulator.base_url, SECRET)
    assert [e.action for e in AuditEntry.objects.all()] == ["backend.add"]

    # The same server by another path is fine; so is a new server with the key retyped
    # (or the key removed).
    response = client.post(page, form_data(simulator.base_url + "/", action="test"))
    assert "gpu-1 is up" in response.content.decode()
    response = client.post(page, form_data(elsewhere.base_url, api_key="sk-other"))
    assert response.status_code == 302
    backend.refresh_from_db()
    assert (backend.base_url, backend.api_key()) == (elsewhere.base_url, "sk-other")
    # The audit log says where it pointed before and after (and never the key).
    entry = AuditEntry.objects.filter(action="backend.edit").get()
    assert f"base_url: {simulator.base_url} → {elsewhere.base_url}" in entry.detail
    assert "key replaced" in entry.detail and "sk-other" not in entry.detail


def test_a_key_variable_with_an_origin_goes_to_that_server_only(staff, monkeypatch):
    """The operator binds a variable's key to one server (``…_ORIGIN``): staff cannot
    point a backend carrying it, new or edited, anywhere else."""
    monkeypatch.setenv("BARISTA_BACKEND_KEY_GPU", "sk-from-env")
    monkeypatch.setenv("BARISTA_BACKEND_KEY_GPU_ORIGIN", "http://127.0.0.1:9")
    client = signed_in(staff)
    elsewhere = form_data("http://127.0.0.1:8/v1", api_key_env="BARISTA_BACKEND_KEY_GPU")
    response = client.post("/console/backends/add/", elsewhere)
    assert response.status_code == 200
    assert "may only be sent to http://127.0.0.1:9" in response.content.decode()
    assert not Backend.objects.exists()
    there = form_data("http://127.0.0.1:9/v1", api_key_env="BARISTA_BACKEND_KEY_GPU")
    assert client.post("/console/backends/add/", there).status_code == 302
    backend = Backend.objects.get()
    assert backend.api_key() == "sk-from-env"
    response = client.post(f"/console/backends/{backend.pk}/", elsewhere)
    assert "may only be sent to" in response.content.decode()
    backend.refresh_from_db()
    assert backend.base_url == "http://127.0.0.1:9/v1"
    # Moved some other way (straight in the database): nothing is sent.
    Backend.objects.update(base_url="http://127.0.0.1:8/v1")
    assert Backend.objects.get().api_key() == ""
