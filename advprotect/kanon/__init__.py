"""K-anonymity protection against classifiers (paper 003, Mygdalis, Tefas & Pitas).

Modules: :mod:`.ranking` (ranks, pmf, group split, verdict), :mod:`.objective` (Eq. 6 for the
shared attack engine), :mod:`.classifiers` (imagenet / faces gallery / TorchScript),
:mod:`.protect` (:class:`~.protect.KAnonProtector`), :mod:`.command` (``advprotect k-anon``),
:mod:`.evaluate` (``advprotect evaluate --kind kanon``), :mod:`.labels`, :mod:`.report`.
"""
