"""
Log observers for twistd's --logger option, which takes a factory called
with no arguments.

    twistd --logger=lvsfeedback.logs.json_stdout -n lvs-director ...

writes one JSON object per event (twisted.logger's format) to stdout, for
journald or a log shipper.
"""

import sys

from twisted.logger import jsonFileLogObserver


def json_stdout():
    return jsonFileLogObserver(sys.stdout)
