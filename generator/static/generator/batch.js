// Keeps the batch page's progress section live by polling the batch's JSON status.
(function () {
  "use strict";
  const section = document.getElementById("batch-progress");
  if (!section || section.dataset.done === "true") return;

  const field = (name) => section.querySelector(`[data-field="${name}"]`);
  // A figure with its unit, or a dash alone when there is none (not "– s").
  const figure = (value, unit) =>
    value === null || value === undefined ? "–" : `${value} ${unit}`;
  const POLL_MS = 500;
  const RETRY_MS = 3000;

  function render(batch) {
    section.className = `progress status-${batch.status}`;
    field("status_display").textContent = batch.status_display;
    field("bar").value = batch.created;
    field("bar").textContent = `${batch.percent}%`;
    field("created").textContent = batch.created;
    field("percent").textContent = batch.percent;
    field("users_per_second").textContent = figure(batch.users_per_second, "users/s");
    field("elapsed_seconds").textContent = figure(batch.elapsed_seconds, "s");
    field("eta_seconds").textContent = figure(batch.eta_seconds, "s");

    const outcome = field("outcome");
    outcome.replaceChildren();
    if (batch.status === "finished") {
      outcome.append(`${batch.created} users created in ${batch.elapsed_seconds.toFixed(2)} s. `);
      const link = document.createElement("a");
      link.href = batch.users_url;
      link.textContent = "See these users";
      const csv = document.createElement("a");
      csv.href = batch.csv_url;
      csv.download = "";
      csv.textContent = "Download them as CSV";
      outcome.append(link, " ", csv);
    } else if (batch.status === "failed") {
      outcome.append(
        `This batch failed: ${batch.failure_reason || "an unexpected error stopped it."} ` +
          `${batch.created} of ${batch.total} users were created.`,
      );
    } else if (batch.status === "cancelled") {
      outcome.append(`Cancelled: ${batch.created} of ${batch.total} users were kept.`);
    } else if (batch.status === "pending") {
      outcome.append("Queued: it will start as soon as a worker is free.");
    } else if (batch.status === "deleting") {
      outcome.append(
        `Deleting the users: ${batch.deleted} of ${batch.created} deleted so far.`,
      );
    } else if (batch.status === "deleted") {
      outcome.append(`${batch.deleted} users deleted.`);
    }

    const deleting = batch.status === "deleting" || batch.status === "deleted";
    field("deletion").hidden = !deleting;
    field("deleted_bar").value = batch.deleted_percent;
    field("deleted_bar").textContent = `${batch.deleted_percent}%`;
  }

  function showActions(batch) {
    for (const form of section.querySelectorAll("[data-show-when]")) {
      form.hidden = !batch[form.dataset.showWhen];
    }
  }

  async function poll() {
    let delay = POLL_MS;
    try {
      const response = await fetch(section.dataset.statusUrl, {
        headers: { Accept: "application/json" },
        credentials: "same-origin",
      });
      if (response.ok) {
        const batch = await response.json();
        render(batch);
        showActions(batch);
        if (batch.done) return;
      } else if (response.status < 500) {
        // Logged out, or the batch is gone: asking again cannot help, reloading may.
        field("outcome").textContent =
          "Live progress stopped: reload the page (you may need to log in again).";
        return;
      } else {
        delay = RETRY_MS;
      }
    } catch (error) {
      // A dropped connection is retried; the page keeps its last figures meanwhile.
      delay = RETRY_MS;
    }
    window.setTimeout(poll, delay);
  }

  poll();
})();
