"""The cluster's first run, fed to ``manage.py shell`` on stdin after ``migrate``.

A person to sign in as, an API key for them (printed, the last line), and the simulator
registered as the backend of one alias — as an operator would in the console. Reads
CLUSTER_USER, CLUSTER_PASSWORD_FILE, CLUSTER_ALIAS and CLUSTER_BACKEND_URL.
"""

from __future__ import annotations

import os
from pathlib import Path

from django.contrib.auth.models import User

from apps.api.services import api_key_create
from apps.backends.models import Backend

user = User.objects.create_user(
    username=os.environ["CLUSTER_USER"],
    password=Path(os.environ["CLUSTER_PASSWORD_FILE"]).read_text().strip(),
)
Backend.objects.create(
    name=f"{os.environ['CLUSTER_ALIAS']}-1",
    alias=os.environ["CLUSTER_ALIAS"],
    model_name="sim-cluster-model",
    base_url=os.environ["CLUSTER_BACKEND_URL"],
    simulated=True,
)
_, plain = api_key_create(owner=user, name="cluster", allowed_models=[], requests_per_minute=None)
print(plain)
