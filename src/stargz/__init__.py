"""stargz: eStargz lazy pulling of container images, in Python.

Data flows registry → remote → estargz → cache → layer → fs → snapshotter/store; cli on top.
"""

__version__ = "0.1.0"
