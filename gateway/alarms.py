"""The old home of the alarm functions: they live in gateway/store/alarms.py (the alarms table's
store module). Kept importable under their old names."""

from gateway.store.alarms import (acknowledge_alarm, clear_alarm, open_alarms,  # noqa: F401
                                  raise_alarm)
