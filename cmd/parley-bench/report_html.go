package main

import (
	"fmt"
	"html/template"
	"io"
	"strings"
)

// WriteHTML writes a self-contained HTML page: tables plus one inline SVG
// bar chart per latency distribution. No external assets.
func (r *Report) WriteHTML(w io.Writer) error {
	return htmlTmpl.Execute(w, r)
}

var htmlTmpl = template.Must(template.New("report").Funcs(template.FuncMap{
	"metric": formatMetric,
	"ms":     fmtMS,
	"svg":    histogramSVG,
	"keys":   sortedKeys,
	"ts":     func(r *Report) string { return r.StartedAt.Format("2006-01-02 15:04:05 MST") },
	"join":   strings.Join,
}).Parse(`<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>parley-bench {{.Scenario}}</title>
<style>
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:960px;color:#1d2330;padding:0 1em}
h1{font-size:1.5em;margin-bottom:.2em}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #dde;padding-bottom:.2em}
.sub{color:#667;margin-top:0}
table{border-collapse:collapse;margin:.5em 0}th,td{padding:.25em .8em;text-align:left;border-bottom:1px solid #eef}
th{background:#f4f5fa}td.num{text-align:right;font-variant-numeric:tabular-nums}
.fail{color:#b00020}.note{color:#445}
figure{margin:1em 0}figcaption{font-weight:600;margin-bottom:.3em}
svg text{font-size:11px;fill:#445}svg .bar{fill:#4c6ef5}svg .bar:hover{fill:#f59f00}
svg .q{stroke:#e03131;stroke-width:1;stroke-dasharray:3 2}svg .axis{stroke:#889}
</style>
</head>
<body>
<h1>parley-bench {{.Scenario}}</h1>
<p class="sub">started {{ts .}} · elapsed {{printf "%.1f" .ElapsedS}} s · target {{join .Targets ", "}}</p>
{{if .Failures}}<h2 class="fail">Failed checks</h2><ul>{{range .Failures}}<li class="fail">{{.}}</li>{{end}}</ul>{{end}}
<h2>Results</h2>
<table><tr><th>result</th><th>value</th></tr>
{{range .Results}}<tr><td>{{.Label}}</td><td class="num">{{metric .}}</td></tr>
{{end}}</table>
{{if .Latencies}}<h2>Latency (ms)</h2>
<table><tr><th></th><th>count</th><th>min</th><th>p50</th><th>p90</th><th>p99</th><th>p99.9</th><th>max</th><th>mean</th></tr>
{{range .Latencies}}<tr><td>{{.Label}}</td><td class="num">{{.MS.Count}}</td><td class="num">{{ms .MS.Min}}</td><td class="num">{{ms .MS.P50}}</td><td class="num">{{ms .MS.P90}}</td><td class="num">{{ms .MS.P99}}</td><td class="num">{{ms .MS.P999}}</td><td class="num">{{ms .MS.Max}}</td><td class="num">{{ms .MS.Mean}}</td></tr>
{{end}}</table>
{{range .Latencies}}<figure><figcaption>{{.Label}}</figcaption>{{svg .}}</figure>
{{end}}{{end}}
{{if .Errors}}<h2>Errors</h2><table><tr><th>error</th><th>count</th></tr>
{{$e := .Errors}}{{range keys .Errors}}<tr><td>{{.}}</td><td class="num">{{index $e .}}</td></tr>
{{end}}</table>{{end}}
<h2>Parameters</h2>
<table><tr><th>parameter</th><th>value</th></tr>
{{range .Params}}<tr><td>{{.Name}}</td><td>{{.Value}}</td></tr>
{{end}}</table>
{{if .Notes}}<h2>Notes</h2><ul>{{range .Notes}}<li class="note">{{.}}</li>{{end}}</ul>{{end}}
</body>
</html>
`))

// Chart geometry.
const (
	svgW, svgH             = 720, 220
	svgLeft, svgRight      = 56, 12
	svgTop, svgBottom      = 14, 40
	svgPlotW, svgPlotH     = svgW - svgLeft - svgRight, svgH - svgTop - svgBottom
	svgMinBarGap           = 1
	svgQuantileLabelOffset = 4
)

// histogramSVG draws one latency histogram as bars (one per log-spaced bin,
// each with a tooltip), with dashed markers at p50, p99 and p99.9.
func histogramSVG(l Latency) template.HTML {
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" role="img" aria-label="%s">`,
		svgW, svgH, svgW, svgH, template.HTMLEscapeString(l.Label+" latency histogram"))
	if len(l.Bins) == 0 {
		fmt.Fprintf(&b, `<text x="%d" y="%d">no samples</text></svg>`, svgLeft, svgH/2)
		return template.HTML(b.String()) //nolint:gosec // built from numbers and escaped text
	}
	var maxCount int64
	for _, bin := range l.Bins {
		if bin.Count > maxCount {
			maxCount = bin.Count
		}
	}
	n := len(l.Bins)
	bw := float64(svgPlotW) / float64(n)
	// axes
	fmt.Fprintf(&b, `<line class="axis" x1="%d" y1="%d" x2="%d" y2="%d"/>`, svgLeft, svgTop+svgPlotH, svgLeft+svgPlotW, svgTop+svgPlotH)
	fmt.Fprintf(&b, `<line class="axis" x1="%d" y1="%d" x2="%d" y2="%d"/>`, svgLeft, svgTop, svgLeft, svgTop+svgPlotH)
	fmt.Fprintf(&b, `<text x="%d" y="%d" text-anchor="end">%d</text>`, svgLeft-4, svgTop+8, maxCount)
	fmt.Fprintf(&b, `<text x="%d" y="%d" text-anchor="end">0</text>`, svgLeft-4, svgTop+svgPlotH)
	for i, bin := range l.Bins {
		if bin.Count == 0 {
			continue
		}
		h := float64(svgPlotH) * float64(bin.Count) / float64(maxCount)
		if h < 1 {
			h = 1
		}
		x := float64(svgLeft) + float64(i)*bw
		w := bw - svgMinBarGap
		if w < 1 {
			w = 1
		}
		fmt.Fprintf(&b, `<rect class="bar" x="%.1f" y="%.1f" width="%.1f" height="%.1f"><title>%s–%s ms: %d</title></rect>`,
			x, float64(svgTop+svgPlotH)-h, w, h, fmtMS(bin.LoMS), fmtMS(bin.HiMS), bin.Count)
	}
	// x tick labels: first, middle and last bin edges (log scale)
	ticks := []int{0, n / 2, n}
	for _, t := range ticks {
		var v float64
		if t == n {
			v = l.Bins[n-1].HiMS
		} else {
			v = l.Bins[t].LoMS
		}
		anchor := "middle"
		if t == 0 {
			anchor = "start"
		} else if t == n {
			anchor = "end"
		}
		fmt.Fprintf(&b, `<text x="%.1f" y="%d" text-anchor="%s">%s ms</text>`, float64(svgLeft)+float64(t)*bw, svgTop+svgPlotH+14, anchor, fmtMS(v))
	}
	fmt.Fprintf(&b, `<text x="%d" y="%d" text-anchor="middle">latency (log scale)</text>`, svgLeft+svgPlotW/2, svgH-6)
	// quantile markers
	for i, q := range []struct {
		name string
		v    float64
	}{{"p50", l.MS.P50}, {"p99", l.MS.P99}, {"p99.9", l.MS.P999}} {
		x, ok := binX(l.Bins, q.v, bw)
		if !ok {
			continue
		}
		// Labels are staggered so close markers stay readable, and put on
		// the left of their line near the right edge.
		tx, anchor := x+svgQuantileLabelOffset, "start"
		if x > float64(svgLeft+svgPlotW-40) {
			tx, anchor = x-svgQuantileLabelOffset, "end"
		}
		fmt.Fprintf(&b, `<line class="q" x1="%.1f" y1="%d" x2="%.1f" y2="%d"/><text x="%.1f" y="%d" text-anchor="%s">%s</text>`,
			x, svgTop, x, svgTop+svgPlotH, tx, svgTop+10+12*i, anchor, q.name)
	}
	b.WriteString(`</svg>`)
	return template.HTML(b.String()) //nolint:gosec // built from numbers and escaped text
}

// binX places value v on the chart: inside its bin, linearly.
func binX(bins []BinMS, v, bw float64) (float64, bool) {
	for i, bin := range bins {
		if v >= bin.LoMS && v <= bin.HiMS || i == len(bins)-1 && v > bin.HiMS {
			frac := 0.5
			if bin.HiMS > bin.LoMS {
				frac = (v - bin.LoMS) / (bin.HiMS - bin.LoMS)
				if frac > 1 {
					frac = 1
				}
			}
			return float64(svgLeft) + (float64(i)+frac)*bw, true
		}
		if i+1 < len(bins) && v > bin.HiMS && v < bins[i+1].LoMS { // between integer-ns bins
			return float64(svgLeft) + float64(i+1)*bw, true
		}
	}
	return 0, false
}
