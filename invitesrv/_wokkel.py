"""
The single compatibility shim for Wokkel 18.0.0 on current Twisted.

Wokkel 18.0.0 (the last release) imports C{_PY3} from C{twisted.python.compat}
and the module C{twisted.python.constants}; current Twisted has neither. Both
are restored here, before any Wokkel import, so that the rest of the code base
imports Wokkel normally after C{import invitesrv._wokkel}. C{tests/test_wokkel_shim.py}
proves the shim is still needed and still sufficient.
"""

import sys

import constantly
from twisted.python import compat

if not hasattr(compat, "_PY3"):
    compat._PY3 = True

sys.modules.setdefault("twisted.python.constants", constantly)
