"""The peers ToMA is measured against, in the same harness: ToMeSD, CA-ToMe, ToDo.

ToMeSD on UNets runs through the ``tomesd`` package itself; where that package does not apply
(Flux) and for CA-ToMe (ToMeSD's matching plus a threshold and a pair cache), the bipartite
matcher here reimplements the published algorithm with explicit indices.
"""
