// Compare: several models' training loss and validation top-1 on one chart each.
'use strict';

(() => {
  const series = Dash.page.series || [];
  const pick = document.getElementById('compare-pick');
  document.getElementById('compare-form').addEventListener('submit', () => {
    document.getElementById('compare-ids').value =
      Array.from(pick.selectedOptions).map((o) => o.value).join(',');
    pick.disabled = true;
  });
  if (!window.Plotly || !series.length) return;
  const of = (records, split, key) => records.filter((r) => r.split === split && r[key] !== null && r[key] !== undefined);
  const loss = series.map((s) => {
    const rs = of(s.records, 'train', 'loss');
    return {type: 'scatter', mode: 'lines', name: Dash.plotText(s.name), x: rs.map((r) => r.epoch), y: rs.map((r) => r.loss)};
  });
  const top1 = series.map((s) => {
    const rs = of(s.records, 'val', 'top1');
    return {type: 'scatter', mode: 'lines+markers', name: Dash.plotText(s.name), x: rs.map((r) => r.epoch), y: rs.map((r) => r.top1)};
  });
  const layout = (title) => ({title: {text: title}, margin: {t: 40, r: 10, b: 80, l: 50}, height: 340,
                              xaxis: {title: {text: 'epoch'}}, legend: {orientation: 'h', y: -0.3}});
  Plotly.newPlot('compare-loss', loss, layout('training loss'), {displaylogo: false, responsive: true});
  Plotly.newPlot('compare-top1', top1, {...layout('validation top-1'), yaxis: {tickformat: '.0%'}},
                 {displaylogo: false, responsive: true});
})();
