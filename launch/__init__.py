"""The launch layer: the command line, the process wiring, the dev stack and its embedded broker.

It sits on top of everything else (installed as `notaflow.launch`): it may import the core, the
ingress dialects, the consumers and the sandbox; nothing imports it back (import-linter holds this).
"""
