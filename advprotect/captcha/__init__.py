"""Robust CAPTCHAs (paper 000, section 3.1.3): text CAPTCHAs that people read as before and
solvers misread.

* :mod:`.generate`: deterministic rendering with the ``captcha`` package (styles plain, noisy, lines);
* :mod:`.models`: our surrogate solvers (``crnn`` and ``fcn`` with CTC, ``cnn`` per position),
  trained weights shipped in ``weights/``; :mod:`.train` rebuilds them;
* :mod:`.ctc_objective`, :mod:`.position_objective`: multi-target objectives;
* :mod:`.preprocess`: differentiable solver clean-ups used as the attack's EOT;
* :mod:`.protect`: :class:`CaptchaProtector` on the shared attack engine;
* :mod:`.solvers`: black-box checks (ddddocr, Tesseract); :mod:`.evaluate`: ``evaluate --kind captcha``;
* :mod:`.commands`: ``advprotect captcha generate | protect | train``.
"""
