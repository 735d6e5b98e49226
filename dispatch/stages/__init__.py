"""Protocol stages: the stack's work as sans-IO functions over batches of handles.

(See base.py for the contract; importing this package registers every stage.)
"""
