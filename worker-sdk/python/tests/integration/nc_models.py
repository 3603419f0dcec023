"""A stand-in for the Django pieces NodeConductor's tasks touch, for the Celery-port tests.

The ported task and executor modules (``nc_core_tasks``, ``nc_core_executors``,
``nc_openstack``) keep Waldur's bodies; what they import from Django and
from ``waldur_core.core.utils`` comes from here instead:

* ``Volume``: a model with Waldur's state machine (django-fsm transitions that
  raise ``TransitionNotAllowed``), ``save(update_fields=...)`` (text fields
  stored as ``str(value)``, as Django's TextField does), ``delete()`` and
  ``refresh_from_db()``, kept in SQLite so worker processes and the test see
  one database (``$NC_TEST_DB``);
* ``serialize_instance``/``deserialize_instance``: ``"openstack.volume:<pk>"``;
* a fake OpenStack backend whose behaviour follows the volume's name, and
  which logs every call, so a test can check the order of calls.
"""

import json
import os
import sqlite3
import time


class ObjectDoesNotExist(Exception):
    pass


class IntegrityError(Exception):
    pass


class TransitionNotAllowed(Exception):
    pass


class RuntimeStateException(Exception):
    pass


class CinderError(Exception):
    """What the fake backend raises: an OpenStack error."""


def _db():
    conn = sqlite3.connect(os.environ["NC_TEST_DB"], timeout=30, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    return conn


def create_schema():
    with _db() as conn:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS volume (pk INTEGER PRIMARY KEY, name TEXT, tenant TEXT, state TEXT, "
            "runtime_state TEXT, backend_id TEXT, error_message TEXT, error_traceback TEXT, action TEXT, "
            "action_details TEXT)"
        )
        conn.execute("CREATE TABLE IF NOT EXISTS log (n INTEGER PRIMARY KEY AUTOINCREMENT, pk INTEGER, "
                     "what TEXT, t REAL, pid INTEGER)")


def log(pk, what):
    with _db() as conn:
        conn.execute("INSERT INTO log (pk, what, t, pid) VALUES (?, ?, ?, ?)", (pk, what, time.time(), os.getpid()))


def history(pk=None):
    with _db() as conn:
        if pk is None:
            return conn.execute("SELECT pk, what, t FROM log ORDER BY n").fetchall()
        return [row[0] for row in conn.execute("SELECT what FROM log WHERE pk = ? ORDER BY n", (pk,))]


class Model:
    """django.db.models.Model, as far as Waldur's Task.run checks for it."""


class ErrorMessageMixin:
    """Waldur's models.ErrorMessageMixin: the model has error_message and error_traceback."""


class States:
    CREATION_SCHEDULED = "CREATION_SCHEDULED"
    CREATING = "CREATING"
    UPDATE_SCHEDULED = "UPDATE_SCHEDULED"
    UPDATING = "UPDATING"
    DELETION_SCHEDULED = "DELETION_SCHEDULED"
    DELETING = "DELETING"
    OK = "OK"
    ERRED = "ERRED"


class _Meta:
    app_label = "openstack"
    model_name = "volume"
    object_name = "Volume"

    def __str__(self):
        return f"{self.app_label}.{self.model_name}"


class _Manager:
    def get(self, pk):
        with _db() as conn:
            row = conn.execute("SELECT * FROM volume WHERE pk = ?", (int(pk),)).fetchone()
        if row is None:
            raise ObjectDoesNotExist(f"Volume {pk} does not exist")
        return Volume._from_row(row)

    def create(self, **fields):
        volume = Volume(**fields)
        with _db() as conn:
            cur = conn.execute("INSERT INTO volume (name, tenant, state) VALUES (?, ?, ?)",
                               (volume.name, volume.tenant, volume.state))
            volume.pk = cur.lastrowid
        volume.save()
        return volume

    def filter(self, **where):
        clauses = " AND ".join(f"{k} = ?" for k in where)
        with _db() as conn:
            rows = conn.execute(f"SELECT * FROM volume WHERE {clauses}", tuple(where.values())).fetchall()
        return [Volume._from_row(r) for r in rows]


class Volume(ErrorMessageMixin, Model):
    """Waldur's Volume, reduced to its state machine and the fields the tasks write."""

    States = States
    DoesNotExist = ObjectDoesNotExist
    _meta = _Meta()
    objects = _Manager()
    FIELDS = ("name", "tenant", "state", "runtime_state", "backend_id", "error_message", "error_traceback",
              "action", "action_details")

    def __init__(self, pk=None, name="", tenant="t1", state=States.CREATION_SCHEDULED, runtime_state="",
                 backend_id="", error_message="", error_traceback="", action="", action_details=None):
        self.pk = pk
        self.name = name
        self.tenant = tenant
        self.state = state
        self.runtime_state = runtime_state
        self.backend_id = backend_id
        self.error_message = error_message
        self.error_traceback = error_traceback
        self.action = action
        self.action_details = action_details or {}

    @classmethod
    def _from_row(cls, row):
        pk, name, tenant, state, runtime_state, backend_id, error_message, error_traceback, action, details = row
        return cls(pk, name, tenant, state, runtime_state or "", backend_id or "", error_message or "",
                   error_traceback or "", action or "", json.loads(details or "{}"))

    def __str__(self):
        return self.name

    def save(self, update_fields=None):
        fields = update_fields or self.FIELDS
        values = []
        for f in fields:
            value = getattr(self, f)
            # Django's TextField keeps str(value): an exception saved as error_message is its message.
            values.append(json.dumps(value) if f == "action_details" else ("" if value is None else str(value)))
        with _db() as conn:
            conn.execute(f"UPDATE volume SET {', '.join(f'{f} = ?' for f in fields)} WHERE pk = ?",
                         (*values, self.pk))

    def delete(self):
        # Logged first (each statement commits on its own): a reader that
        # sees the row gone sees its log line.
        log(self.pk, "deleted")
        with _db() as conn:
            conn.execute("DELETE FROM volume WHERE pk = ?", (self.pk,))

    def refresh_from_db(self):
        fresh = Volume.objects.get(self.pk)
        self.__dict__.update(fresh.__dict__)

    def get_state_display(self):
        return self.state

    def get_backend(self):
        return FakeOpenStackBackend()

    # django-fsm transitions
    def _transition(self, name, sources, target):
        if self.state not in sources:
            raise TransitionNotAllowed(f"{name} from {self.state}")
        self.state = target
        log(self.pk, name)

    def begin_creating(self):
        self._transition("begin_creating", [States.CREATION_SCHEDULED], States.CREATING)

    def schedule_deleting(self):
        self._transition("schedule_deleting", [States.OK, States.ERRED], States.DELETION_SCHEDULED)

    def begin_deleting(self):
        self._transition("begin_deleting", [States.DELETION_SCHEDULED], States.DELETING)

    def set_ok(self):
        self._transition("set_ok", [States.CREATING, States.UPDATING, States.DELETING], States.OK)

    def set_erred(self):
        self._transition("set_erred", [s for s in vars(States) if not s.startswith("_")], States.ERRED)


def serialize_instance(instance):
    return f"{instance._meta}:{instance.pk}"


def deserialize_instance(serialized_instance):
    model_name, pk = serialized_instance.split(":")
    assert model_name == "openstack.volume", model_name
    return Volume.objects.get(pk)


def key_by_uuid(uuid):
    """The seed's helper (NodeConductor's code leaves it out)."""
    return f"vm:{uuid}"


PULLS_UNTIL_AVAILABLE = 2
CHECKS_UNTIL_DELETED = 2


class FakeOpenStackBackend:
    """Cinder as the tests need it: the volume's name says how it behaves.

    ``fail-create*`` fails ``create_volume``; ``broken*`` goes to the runtime
    state ``error``; ``stuck*`` never leaves ``creating``; others become
    ``available`` on the second pull. ``fail-delete*`` fails
    ``delete_volume``; a deleted volume is gone on the second check.
    """

    def _count(self, volume, method):
        log(volume.pk, method)
        return history(volume.pk).count(method)

    def create_volume(self, volume):
        self._count(volume, "create_volume")
        if volume.name.startswith("fail-create"):
            raise CinderError(f"Quota exceeded for volumes (requested 1 for {volume.name})")
        time.sleep(0.2)
        volume.backend_id = f"cinder-{volume.pk}"
        volume.runtime_state = "creating"
        volume.save(update_fields=["backend_id", "runtime_state"])

    def pull_volume_runtime_state(self, volume):
        pulls = self._count(volume, "pull_volume_runtime_state")
        if volume.name.startswith("broken"):
            volume.runtime_state = "error"
        elif not volume.name.startswith("stuck") and pulls >= PULLS_UNTIL_AVAILABLE:
            volume.runtime_state = "available"
        volume.save(update_fields=["runtime_state"])

    def delete_volume(self, volume):
        self._count(volume, "delete_volume")
        if volume.name.startswith("fail-delete"):
            raise CinderError(f"Volume {volume.backend_id} is still attached")
        volume.runtime_state = "deleting"
        volume.save(update_fields=["runtime_state"])

    def is_volume_deleted(self, volume):
        return self._count(volume, "is_volume_deleted") >= CHECKS_UNTIL_DELETED
