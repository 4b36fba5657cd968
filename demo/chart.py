"""The demo's picture: attempts per second (succeeded and failed) and the p95 commit → acknowledgement
latency of one webhook, from billhook.delivery_report, as a chart in the terminal and as an HTML page
with an SVG chart.

    python demo/chart.py DSN WEBHOOK_ID SINCE OUTPUT.html
"""

import html
import sys

import psycopg

WIDTH, HEIGHT, MARGIN = 860, 320, 56


def report(dsn, webhook_id, since):
    """The time series, and the median time a push took (request to response)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT bucket_start, succeeded, failed, extract(epoch FROM latency_p95)::float8 * 1000"
            " FROM billhook.delivery_report(%s::timestamptz, now(), '1 second', %s)", (since, webhook_id)).fetchall()
        push_ms = conn.execute("SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY duration_ms)"
                               " FROM billhook.delivery_attempts WHERE webhook_id = %s", (webhook_id,)).fetchone()[0]
    return rows, push_ms


def terminal_chart(rows):
    most = max((ok + failed for _, ok, failed, _ in rows), default=0) or 1
    lines = ["== attempts per second (# succeeded, x failed) and p95 commit → acknowledgement"]
    for at, ok, failed, p95 in rows:
        bar = "#" * round(50 * ok / most) + "x" * round(50 * failed / most)
        latency = f"{p95:7.1f} ms" if p95 is not None else "       -  "
        lines.append(f"{at:%H:%M:%S} {ok + failed:6} {latency}  {bar}")
    return "\n".join(lines)


def svg_chart(rows):
    plot_w, plot_h = WIDTH - 2 * MARGIN, HEIGHT - 2 * MARGIN
    most = max((ok + failed for _, ok, failed, _ in rows), default=0) or 1
    slowest = max((p95 for *_, p95 in rows if p95 is not None), default=0) or 1
    step = plot_w / max(len(rows), 1)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" font-family="sans-serif"'
             f' font-size="12">',
             f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>']
    for n, (_, ok, failed, _) in enumerate(rows):
        x = MARGIN + n * step
        ok_h, failed_h = plot_h * ok / most, plot_h * failed / most
        parts.append(f'<rect x="{x:.1f}" y="{MARGIN + plot_h - ok_h:.1f}" width="{step * 0.8:.1f}" height="{ok_h:.1f}"'
                     f' fill="#4caf50"><title>{ok} succeeded</title></rect>')
        parts.append(f'<rect x="{x:.1f}" y="{MARGIN + plot_h - ok_h - failed_h:.1f}" width="{step * 0.8:.1f}"'
                     f' height="{failed_h:.1f}" fill="#e53935"><title>{failed} failed</title></rect>')
    points = " ".join(f"{MARGIN + (n + 0.4) * step:.1f},{MARGIN + plot_h - plot_h * p95 / slowest:.1f}"
                      for n, (*_, p95) in enumerate(rows) if p95 is not None)
    parts.append(f'<polyline points="{points}" fill="none" stroke="#1e88e5" stroke-width="2"/>')
    parts += [f'<line x1="{MARGIN}" y1="{MARGIN + plot_h}" x2="{MARGIN + plot_w}" y2="{MARGIN + plot_h}" stroke="#333"/>',
              f'<line x1="{MARGIN}" y1="{MARGIN}" x2="{MARGIN}" y2="{MARGIN + plot_h}" stroke="#333"/>',
              f'<text x="{MARGIN - 6}" y="{MARGIN + 4}" text-anchor="end">{most}/s</text>',
              f'<text x="{MARGIN - 6}" y="{MARGIN + plot_h}" text-anchor="end">0</text>',
              f'<text x="{MARGIN + plot_w + 6}" y="{MARGIN + 4}" fill="#1e88e5">{slowest:.0f} ms</text>',
              f'<text x="{MARGIN}" y="{HEIGHT - 20}">{rows[0][0]:%H:%M:%S}</text>' if rows else "",
              f'<text x="{MARGIN + plot_w}" y="{HEIGHT - 20}" text-anchor="end">{rows[-1][0]:%H:%M:%S}</text>'
              if rows else "",
              f'<text x="{MARGIN}" y="24" font-size="15">Attempts per second: '
              '<tspan fill="#4caf50">succeeded</tspan>, <tspan fill="#e53935">failed</tspan>; '
              '<tspan fill="#1e88e5">p95 commit → acknowledgement</tspan></text>',
              "</svg>"]
    return "\n".join(parts)


def main():
    dsn, webhook_id, since, output = sys.argv[1:5]
    rows, push_ms = report(dsn, int(webhook_id), since)
    print(terminal_chart(rows))
    print(f"== a push took {push_ms:.0f} ms (median, request to response) at this Python receiver")
    print("== the p95 includes waiting behind the other invoices of the same second, committed in one statement"
          " (make bench's P2 measures commits one by one)")
    with open(output, "w") as page:
        source = html.escape(f"billhook.delivery_report(since, now(), '1 second', webhook_id => {webhook_id})")
        page.write("<!doctype html><meta charset=utf-8><title>billhook demo: deliveries</title>\n"
                   f"<h1>billhook demo</h1>\n<p>From <code>{source}</code>.</p>\n{svg_chart(rows)}\n")
    print(f"== the same as a chart: {output}")


if __name__ == "__main__":
    main()
