"""What PostgreSQL does to a restore_command before /bin/sh runs it."""


def expand_placeholders(command: str, walname: str, dest: str) -> str:
    """PostgreSQL's %-substitution in restore_command (%f, %p, %%; other % kept)."""
    out, i = [], 0
    while i < len(command):
        pair = command[i : i + 2]
        if pair in ("%f", "%p", "%%"):
            out.append({"%f": walname, "%p": dest, "%%": "%"}[pair])
            i += 2
        else:
            out.append(command[i])
            i += 1
    return "".join(out)
