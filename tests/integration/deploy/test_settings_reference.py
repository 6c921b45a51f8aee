"""deploy/README.md lists every setting the services read, as their settings classes define it."""

from __future__ import annotations

from ckrv.services.common.settings import CommonSettings, ServiceSettings
from ckrv.services.gateway.settings import GatewaySettings
from ckrv.services.runners.settings import RunnerSettings
from deploy.settings_reference import README, current_reference, reference, settings_classes


def test_the_readme_has_the_settings_reference_the_code_makes() -> None:
    written = current_reference(README.read_text())
    assert written == reference(), "run: python deploy/settings_reference.py --write"


def test_the_reference_has_every_field_of_every_settings_class() -> None:
    classes = settings_classes()
    assert classes[0] is CommonSettings
    assert {GatewaySettings, RunnerSettings} <= set(classes)
    text = reference()
    assert "`CKRV_ENV`" in text
    for cls in classes:
        for name in set(cls.model_fields) - {"env"}:
            own = f"`{cls.env_var(name)}`"
            # What every service has is listed once, under `CKRV_<SERVICE>_`.
            shared = issubclass(cls, ServiceSettings) and name in ServiceSettings.model_fields
            assert own in text or (shared and f"`CKRV_<SERVICE>_{name.upper()}`" in text), own
