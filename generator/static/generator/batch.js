// Keeps the batch page's progress section live: the server renders the section on its own
// (?fragment=progress) and this swaps it in, so every sentence about the batch lives in the template.
(function () {
  "use strict";
  const section = document.getElementById("batch-progress");
  if (!section || section.dataset.done === "true") return;

  const POLL_MS = 500;
  const RETRY_MS = 3000;
  const SECTION_ATTRIBUTES = ["class", "data-done", "aria-busy"];

  // A part's markup without the CSRF token, which Django masks afresh in every response.
  function signature(part) {
    const copy = part.cloneNode(true);
    for (const token of copy.querySelectorAll('[name="csrfmiddlewaretoken"]')) {
      token.removeAttribute("value");
    }
    return copy.outerHTML;
  }

  // Only the parts that changed are replaced: a focused button that did not change keeps focus,
  // and the live region (the section, which stays) announces only what is new.
  function swap(fresh) {
    for (const name of SECTION_ATTRIBUTES) {
      section.setAttribute(name, fresh.getAttribute(name));
    }
    const parts = Array.from(section.children);
    const freshParts = Array.from(fresh.children);
    if (parts.length !== freshParts.length) {
      section.replaceChildren(...freshParts);
      return;
    }
    freshParts.forEach((part, index) => {
      if (signature(part) !== signature(parts[index])) parts[index].replaceWith(part);
    });
  }

  function stop() {
    section.querySelector('[data-field="stopped"]').hidden = false;
    section.setAttribute("aria-busy", "false");
  }

  async function poll() {
    let delay = POLL_MS;
    try {
      const response = await fetch(section.dataset.fragmentUrl, {
        headers: { Accept: "text/html" },
        credentials: "same-origin",
        // A redirect means the session ended (to the login page): never swap that page in.
        redirect: "manual",
      });
      if (response.ok) {
        const template = document.createElement("template");
        template.innerHTML = await response.text();
        const fresh = template.content.getElementById(section.id);
        if (!fresh) {
          stop();
          return;
        }
        swap(fresh);
        if (fresh.dataset.done === "true") return;
      } else if (response.type === "opaqueredirect" || response.status < 500) {
        // Logged out, or the batch is gone: asking again cannot help, reloading may.
        stop();
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
